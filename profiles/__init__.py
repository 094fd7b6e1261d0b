"""Shipped profiles (YAML), a package so that an installed copy can find them."""

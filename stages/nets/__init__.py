"""The method: the network registry and networks, stochastic depth (eq. 1-2, sampling, the teacher as
it teaches), the transfer losses, MAC counting, and a network's spec and weights on disk."""

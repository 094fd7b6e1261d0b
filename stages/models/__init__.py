"""Network definitions. Import them through ``stages.architectures.build_model``."""

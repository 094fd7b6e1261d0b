"""Network definitions. Import them through ``stages.nets.architectures.build_model``."""

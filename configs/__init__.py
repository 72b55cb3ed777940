"""ml-collections configs, one file per (model, dataset); shared defaults live in ``configs.common``."""

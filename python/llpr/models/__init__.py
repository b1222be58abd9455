"""The models: what llpr needs of a model (:mod:`.protocol`), llpr's own potential
(:mod:`.potential`), MACE models (:mod:`.mace`), tabular models (:mod:`.tabular`), checkpoints
and their registry of model classes (:mod:`.checkpoint`) and training (:mod:`.train`)."""

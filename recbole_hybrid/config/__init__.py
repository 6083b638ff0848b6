"""A run's settings: RecBole's Config built from the settings' layers (`builder`), the yaml
files and the shipped properties (`files`), the checks of keys (`keys`) and values
(`values`), and a dry run of the model on a stand-in dataset (`dry_run`)."""

DEFAULT_MODEL = "MaTrRec"
DEFAULT_DATASET = "ml-100k"  # shipped inside the recbole wheel

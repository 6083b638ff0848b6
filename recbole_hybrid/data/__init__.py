"""Data: the atomic files checked, then loaded through RecBole (`atomic_files`), raw files
converted into atomic files (`convert`), and the stand-in dataset a model is built on
without its data (`stand_in`)."""

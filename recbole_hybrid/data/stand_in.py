"""What a sequential model's constructor reads from RecBole's dataset, without the data: a
model is built on it for a dry run of its settings and to load a bundle."""


class StandInDataset:
    """Field sizes (`num`, `user_num`, `item_num`) and the length of the item sequence field
    (CORE reads it) of a dataset with `n_users` user ids and `n_items` item ids (padding
    included)."""

    def __init__(self, config, n_users, n_items):
        self.uid_field, self.iid_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.user_num, self.item_num = n_users, n_items
        self.field2seqlen = {
            self.iid_field + config["LIST_SUFFIX"]: config["MAX_ITEM_LIST_LENGTH"],
            config["ITEM_LIST_LENGTH_FIELD"]: 1,
        }

    def num(self, field):
        sizes = {self.uid_field: self.user_num, self.iid_field: self.item_num}
        if field not in sizes:
            raise AttributeError(f"a stand-in dataset has only the user and item fields, not "
                                 f"{field!r}")
        return sizes[field]

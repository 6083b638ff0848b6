"""nn.Dropout with this package's faster CPU mask (ops/dropout.py): same arguments, same
`p`, an nn.Dropout to isinstance checks and state dicts."""

from torch import nn

from recbole_hybrid.ops.dropout import dropout


class Dropout(nn.Dropout):
    def forward(self, x):
        return super().forward(x) if self.inplace else dropout(x, self.p, self.training)


def replace_dropouts(module):
    """Swap every plain nn.Dropout inside `module` (RecBole's layers) for Dropout, same p."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, Dropout(child.p))
        else:
            replace_dropouts(child)

"""What every part of the package uses: atomic files (`files`), append-only JSON lines
(`jsonl`), exclusive locks (`locks`), child processes (`processes`), ports (`ports`), the
version stamp (`versions`), where RecBole is installed (`paths`) and names imported on first
use (`lazy`). Nothing here imports torch or RecBole at import time."""

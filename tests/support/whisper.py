"""Build a tiny random-weight Whisper offline, converted to CTranslate2 for faster-whisper."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Whisper's special tokens in its own order; faster-whisper looks them up by name.
_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "pl", "ru", "zh", "ja")
_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in _LANGUAGES),
             "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
             "<|notimestamps|>")
_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>: CTranslate2 appends these after the tokenizer's vocabulary


def build_tiny_whisper(directory: Path, *, seed: int = 0) -> Path:
    """Save a random Whisper (d_model 64, one layer each side) and its CTranslate2 conversion.

    Returns the CTranslate2 directory, which holds `tokenizer.json` and `preprocessor_config.json`
    too: without them faster-whisper would try to download openai/whisper-tiny's.
    """
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    source, converted = directory / "hf", directory / "ct2"
    tokenizer = _byte_level_tokenizer()
    eot, sot = tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|startoftranscript|>")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(source)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(source)
    config = WhisperConfig(
        vocab_size=tokenizer.get_vocab_size() + _TIMESTAMPS, num_mel_bins=80, d_model=64,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        suppress_tokens=[], begin_suppress_tokens=[eot],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    # Otherwise transformers regenerates the generation config from the model config on reload,
    # and `language=` then fails for want of a language table.
    model.generation_config._from_model_config = False
    model.save_pretrained(source)
    TransformersConverter(str(source), copy_files=["tokenizer.json", "preprocessor_config.json"]
                          ).convert(str(converted), force=True)
    return converted


def random_model_options() -> dict[str, Any]:
    """faster-whisper options that get text out of random weights, quickly.

    A random model ranks timestamp and other special tokens as likely as text, and a run of
    control bytes is "text" that strips to nothing: everything but ASCII letters and the space is
    suppressed (the end-of-text token too, so `max_new_tokens` ends every run). Its
    log-probabilities, no-speech probability and compression ratio would trip every fallback
    threshold (and end with nothing kept), so those are disabled; one greedy pass keeps it fast.
    """
    from tokenizers import decoders

    decoder = decoders.ByteLevel()
    alphabet = _byte_alphabet()
    letters = {index for index, symbol in enumerate(alphabet)
               if re.fullmatch("[A-Za-z ]", decoder.decode([symbol]))}
    vocab_size = len(alphabet) + len(_SPECIALS) + _TIMESTAMPS
    return {
        "beam_size": 1, "temperature": 0.0, "without_timestamps": True, "max_new_tokens": 12,
        "suppress_tokens": [index for index in range(vocab_size) if index not in letters],
        "log_prob_threshold": None, "no_speech_threshold": None, "compression_ratio_threshold": None,
    }


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _byte_level_tokenizer() -> Any:
    """256 byte tokens (any text encodes, as with GPT-2's tokenizer) followed by Whisper's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: index for index, symbol in enumerate(_byte_alphabet())}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(_SPECIALS))
    return tokenizer

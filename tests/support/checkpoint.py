"""Build random-weight XTTS-v2 checkpoints in the release layout, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from voiceforge.decoding.threads import on_passing_thread

# torch and TTS take seconds to import; importing them inside the functions keeps collecting a test
# module that imports this one cheap, and only sessions that build a checkpoint pay for them.
if TYPE_CHECKING:
    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

__all__ = ["LANGUAGES", "build_checkpoint"]

# The 17 languages of the released XTTS-v2 config.json, in the release's order.
LANGUAGES: tuple[str, ...] = (
    "en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru",
    "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi",
)  # fmt: skip

# Architecture knobs per size. "full" is the released architecture. "tiny" shrinks the GPT to under
# 1M parameters; shrinking it further saves nothing, because the HiFiGAN decoder (14.4M) and the
# speaker encoder (8.1M) have fixed sizes. Its audio-token cap of 24 stops generation after 21 tokens.
_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"gpt_layers": 2, "gpt_n_model_channels": 64, "gpt_n_heads": 4, "gpt_max_audio_tokens": 24},
    "full": {"gpt_layers": 30, "gpt_n_model_channels": 1024, "gpt_n_heads": 16, "gpt_max_audio_tokens": 605},
}

# The released vocabulary has 6681 entries; the full build pads up to it so the text embedding
# and text head have their real shapes.
_FULL_TEXT_TOKENS = 6681

# Token ids the released model uses; the GPT's audio embedding and head are sized from them.
_NUM_AUDIO_TOKENS = 1026
_START_AUDIO_TOKEN = 1024
_STOP_AUDIO_TOKEN = 1025

# Latent shapes fixed by the architecture: the perceiver resampler always emits 32 latents, and
# the HiFiGAN decoder is conditioned on a 512-d speaker embedding.
_PERCEIVER_LATENTS = 32
_D_VECTOR_DIM = 512


def _char_range(first: int, last: int) -> Iterator[str]:
    return (chr(code) for code in range(first, last + 1))


def _vocab_characters() -> list[str]:
    """Single characters the tokenizer knows, covering what XTTS's text cleaners can emit."""
    # XTTS lower-cases and romanises before tokenising (zh -> pinyin with tone digits,
    # ja -> romaji, ko -> revised romanisation), so Latin letters and digits carry most languages;
    # the other scripts cover ru, ar and hi, and the CJK blocks catch text that skips romanisation.
    ranges = [
        (0x21, 0x7E),  # ASCII punctuation, digits, both cases
        (0xA1, 0xFF),  # Latin-1: ¿ ß à é ñ ö ...
        (0x100, 0x17F),  # Latin Extended-A: ą č ę ğ ı ł ń ő ś ş š ű ž ...
        (0x300, 0x36F),  # combining marks (lower-casing "İ" yields "i" + U+0307)
        (0x400, 0x45F),  # Cyrillic
        (0x600, 0x6FF),  # Arabic
        (0x900, 0x97F),  # Devanagari
        (0x2010, 0x2026),  # dashes, quotes, ellipsis
        (0x3001, 0x3003),  # CJK comma and full stops
        (0x3041, 0x3096),  # hiragana
        (0x30A1, 0x30FA),  # katakana
        (0xFF01, 0xFF1F),  # full-width punctuation and digits
    ]
    chars: list[str] = []
    for first, last in ranges:
        chars.extend(c for c in _char_range(first, last) if not c.isspace())
    return chars


def _write_vocab(path: Path, size: str) -> int:
    """Write a character-level BPE tokenizer file; return the number of text tokens."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import Whitespace

    # Same head as the release: [STOP]=0, [UNK]=1, [SPACE]=2. Language tags and [START] follow and
    # must be added (special) tokens, else the Whitespace pre-tokenizer would split "[en]" apart.
    special = ["[STOP]", "[UNK]", "[SPACE]", *(f"[{lang}]" for lang in LANGUAGES), "[START]"]
    tokens = special + _vocab_characters()
    if size == "full":
        # Pad with CJK ideographs: harmless single characters that make the count match the release.
        tokens.extend(islice(_char_range(0x4E00, 0x9FFF), _FULL_TEXT_TOKENS - len(tokens)))
    vocab = {token: index for index, token in enumerate(tokens)}

    # No merges: every known character is its own token and the rest become [UNK], which is all a
    # random-weight model needs, and keeps encoding independent of any trained merge table.
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="[UNK]", fuse_unk=False))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens([AddedToken(token, normalized=False) for token in special])
    tokenizer.save(str(path), pretty=True)
    return len(vocab)


def _make_config(size: str, num_text_tokens: int, max_audio_tokens: int | None) -> XttsConfig:
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig

    dims = dict(_SIZES[size])
    if max_audio_tokens is not None:
        dims["gpt_max_audio_tokens"] = max_audio_tokens
    args = XttsArgs(
        **dims,
        gpt_number_text_tokens=num_text_tokens,
        gpt_num_audio_tokens=_NUM_AUDIO_TOKENS,
        gpt_start_audio_token=_START_AUDIO_TOKEN,
        gpt_stop_audio_token=_STOP_AUDIO_TOKEN,
        gpt_use_perceiver_resampler=True,
        # The HiFiGAN decoder reads GPT latents directly, so its input width is the GPT width.
        decoder_input_dim=dims["gpt_n_model_channels"],
        d_vector_dim=_D_VECTOR_DIM,
    )
    # Inference and cloning defaults as shipped in the release config.json (they differ from
    # XttsConfig's own defaults), so code that reads them sees the production values.
    return XttsConfig(
        model_args=args,
        audio=XttsAudioConfig(sample_rate=22050, output_sample_rate=24000),
        languages=list(LANGUAGES),
        temperature=0.75,
        length_penalty=1.0,
        repetition_penalty=5.0,
        top_k=50,
        top_p=0.85,
        num_gpt_outputs=1,
        gpt_cond_len=30,
        gpt_cond_chunk_len=4,
        max_ref_len=30,
        sound_norm_refs=False,
    )


def _release_state_dict(model: Xtts) -> dict[str, torch.Tensor]:
    """The model's weights keyed as in the released model.pth."""
    state: dict[str, torch.Tensor] = {}
    # state_dict() tensors are detached views of the parameters, so nothing is copied: the full
    # model's 1.9 GB is held once, not twice.
    for key, value in model.state_dict().items():
        # The release was saved with the old torch weight_norm (weight_g / weight_v); torch's
        # parametrized weight_norm converts those names back on load, so keep that path exercised.
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        state[key] = value

    # Random weights almost never pick the stop token, but "almost" makes output length depend
    # on the seed and the text; ruling it out makes every generation run to the configured cap,
    # so audio length is predictable and max_audio_tokens alone bounds the work.
    state["gpt.mel_head.bias"][_STOP_AUDIO_TOKEN] = -1e4
    return state


def _speaker_latents(names: Sequence[str], model_dim: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Built-in voices with the shapes Xtts.get_gpt_cond_latents / get_speaker_embedding return."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    speakers: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        latent = torch.randn(1, _PERCEIVER_LATENTS, model_dim, generator=generator)
        embedding = torch.randn(1, _D_VECTOR_DIM, 1, generator=generator)
        # The speaker encoder L2-normalises its output; match that so decoder inputs look real.
        embedding = embedding / embedding.norm(dim=1, keepdim=True)
        speakers[name] = {"gpt_cond_latent": latent, "speaker_embedding": embedding}
    return speakers


def build_checkpoint(
    dest: Path,
    *,
    size: str = "tiny",
    speakers: Sequence[str] = ("Ana Florence", "Claribel Dervla", "Damien Black"),
    seed: int = 0,
    max_audio_tokens: int | None = None,
    training_files: bool = False,
) -> Path:
    """Write config.json, model.pth, vocab.json and speakers_xtts.pth for a random XTTS-v2 into dest.

    size="tiny" is a 2-layer, 64-channel GPT (23M parameters in all, mostly the fixed-size HiFiGAN
    decoder and speaker encoder; 93 MB) whose generation always runs to its cap of 21 audio tokens
    (0.97 s of audio at speed 1); size="full" is the released architecture (467M parameters,
    1.87 GB) with the release's cap of 602 tokens. max_audio_tokens overrides gpt_max_audio_tokens,
    which caps generation at max_audio_tokens - 3 tokens. training_files=True also writes what GPT
    fine-tuning needs beside the release files: dvae.pth (an empty state dict, which coqui's trainer
    loads non-strict, leaving a random DVAE) and mel_stats.pth (unit mel norms). The same arguments
    give byte-identical files. Returns dest.
    """
    if size not in _SIZES:
        msg = f"size must be one of {sorted(_SIZES)}, not {size!r}"
        raise ValueError(msg)
    if max_audio_tokens is not None and max_audio_tokens < 4:
        # The GPT reserves three positions (start, stop, conditioning) out of this budget.
        msg = f"max_audio_tokens must be at least 4, not {max_audio_tokens}"
        raise ValueError(msg)

    import torch
    from TTS.tts.models.xtts import Xtts

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    num_text_tokens = _write_vocab(dest / "vocab.json", size)
    config = _make_config(size, num_text_tokens, max_audio_tokens)

    def random_state() -> dict:
        # Seed a private RNG scope so a build neither depends on nor disturbs the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # Built without a tokenizer, Xtts takes the text-token count from the config, and it does
            # not call init_gpt_for_inference, so the state dict has no inference-only duplicate keys.
            return _release_state_dict(Xtts(config))

    # On a passing thread: a benchmark's main thread would otherwise keep OpenMP workers that slow
    # the decoder's thread (voiceforge/decoding/threads.py).
    state = on_passing_thread(random_state)

    # Xtts.load_checkpoint reads checkpoint["model"]. The release pickles the config object next to
    # it, which 0.28 only loads by rewriting model.pth in place; the dict form it rewrites to loads
    # with weights_only=True and leaves the file untouched.
    torch.save({"config": config.to_dict(), "model": state}, dest / "model.pth")

    # A separate stream from the weights', so the voice list does not change the weights.
    voices = _speaker_latents(speakers, config.model_args.gpt_n_model_channels, seed + 1)
    torch.save(voices, dest / "speakers_xtts.pth")

    config.save_json(str(dest / "config.json"))
    if training_files:
        torch.save({}, dest / "dvae.pth")
        torch.save(torch.ones(80), dest / "mel_stats.pth")
    return dest

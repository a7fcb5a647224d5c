"""Enrolment and synthesis end to end through the real XTTS-v2 code (tiny random-weight checkpoint)."""

from __future__ import annotations

import base64
import io
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.audio import FORMATS, data_uri, encode_audio, voice
from tests.support.registry import files_under
from tests.support.speech import enrol, recording, speak, spoken_chunks
from voiceforge.errors import Conflict
from voiceforge.models import Voice, VoiceStatus
from voiceforge.services import engine as engine_module
from voiceforge.services.engine import Engine, Latents
from voiceforge.services.languages import CHAR_LIMITS
from voiceforge.services.text import clean_text, split_text

RATE = 22050


def read_wav(audio_data_uri: str) -> tuple[wave._wave_params, np.ndarray]:
    """Decode the API's data URI: (WAV parameters, int16 samples)."""
    prefix = "data:audio/wav;base64,"
    assert audio_data_uri.startswith(prefix)
    raw = base64.b64decode(audio_data_uri[len(prefix):], validate=True)
    with wave.open(io.BytesIO(raw)) as wav:
        params = wav.getparams()
        frames = wav.readframes(params.nframes)
    return params, np.frombuffer(frames, dtype="<i2")


@pytest.mark.parametrize("weights", [b"not a torch file", "another model"])
def test_a_voice_whose_fine_tuned_weights_this_model_cannot_use_is_409(app, client, weights) -> None:
    """Fine-tuned for another checkpoint (the model directory changed since), or a damaged file: the
    voice cannot speak, and says to fine-tune it again; the server and other voices are fine."""
    import torch

    from voiceforge.services import voices

    voice_id = enrol(client)
    data_dir = Path(app.config["DATA_DIR"])
    path = data_dir / voice_id / "gpt-other.pth"
    if weights == "another model":
        torch.save({"mel_pos_embedding.emb.weight": torch.zeros(8, 4)}, path)
    else:
        path.write_bytes(weights)
    with app.app_context():
        voice = voices.get_voice(voice_id)
        voices.set_finetuned(voice, f"{voice_id}/gpt-other.pth", voice.latents_path)
    for route in ("/api/tts", "/api/tts/stream"):
        refused = client.post(route, json={"text": "Hello.", "voiceId": voice_id})
        assert refused.status_code == 409, refused.json
        assert "fine-tune it again" in refused.json["detail"]
    assert speak(client, "default-female").status_code == 200


@pytest.mark.parametrize("value", ["yes", "true", 1, "1"])
def test_fine_tune_must_be_true_or_false_not_something_like_it(client, value: object) -> None:
    refused = client.post("/api/train-voice", json={"modelName": "Strict", "audioDataUri": recording(),
                                                    "fineTune": value})
    assert refused.status_code == 400 and "fineTune" in refused.json["detail"]
    assert client.get("/api/voices").json["voices"][0]["id"].startswith("default-")  # nothing enrolled


def db_voices(app) -> list[Voice]:
    from voiceforge.services import voices

    with app.app_context():
        return voices.list_voices()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_enrolment_accepts_what_browsers_upload(app, client, data_dir: Path, fmt: str) -> None:
    voice_id = enrol(client, f"Voice from {fmt}", fmt)
    voice = client.get(f"/api/voices/{voice_id}").json
    assert voice["status"] == "ready" and voice["kind"] == "cloned" and voice["language"] == "en"
    assert files_under(data_dir) == [f"{voice_id}/latents.pth", f"{voice_id}/reference.wav"]
    with wave.open(str(data_dir / voice_id / "reference.wav")) as reference:
        assert reference.getnchannels() == 1 and reference.getframerate() == RATE
        assert 3.0 <= reference.getnframes() / RATE <= 4.5


def test_enrolment_takes_a_language_and_ignores_unknown_fields(client) -> None:
    voice_id = enrol(client, "Русский голос", language="ru", somethingElse=True)
    assert client.get(f"/api/voices/{voice_id}").json["language"] == "ru"


def _upload(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)
REJECTIONS = [
    ({"modelName": "x", "audioDataUri": "not a data uri"}, 400),
    ({"modelName": "x", "audioDataUri": "data:audio/wav;base64,@@@not-base64@@@"}, 400),
    ({"modelName": "x", "audioDataUri": "data:audio/wav;base64,"}, 400),
    ({"modelName": "x", "audioDataUri": _upload("audio/wav", PNG)}, 415),
    ({"modelName": "x", "audioDataUri": _upload("audio/mpeg", np.random.default_rng(1).bytes(5000))}, 415),
    ({"modelName": "x", "audioDataUri": _upload("audio/wav", b"")}, 400),
    ({"modelName": "x"}, 400),
    ({"audioDataUri": "data:audio/wav;base64,AAAA"}, 400),
    ({"modelName": 7, "audioDataUri": "data:audio/wav;base64,AAAA"}, 400),
    ({"modelName": "", "audioDataUri": "data:audio/wav;base64,AAAA"}, 422),
]


@pytest.mark.parametrize(("body", "status"), REJECTIONS)
def test_bad_uploads_are_rejected_and_leave_nothing(app, client, data_dir: Path, body: dict,
                                                    status: int) -> None:
    response = client.post("/api/train-voice", json=body)
    assert response.status_code == status, response.json
    assert response.json["detail"]
    assert db_voices(app) == [] and files_under(data_dir) == []


@pytest.mark.parametrize(("samples", "expected"), [
    (np.zeros(RATE * 5, dtype=np.float32), "speech"),  # pure silence
    (voice(1.5, rate=RATE), "3"),  # too short: the detail names the minimum
])
def test_silent_or_short_recordings_are_422(app, client, data_dir: Path, samples: np.ndarray,
                                            expected: str) -> None:
    data, mime = encode_audio(samples, RATE, "wav")
    response = client.post("/api/train-voice", json={"modelName": "x", "audioDataUri": data_uri(data, mime)})
    assert response.status_code == 422
    assert expected in response.json["detail"]
    assert db_voices(app) == [] and files_under(data_dir) == []


def test_unsupported_language_is_422_with_the_list(app, client, data_dir: Path) -> None:
    response = client.post("/api/train-voice", json={"modelName": "x", "audioDataUri": recording(),
                                                     "language": "tlh"})
    assert response.status_code == 422
    assert "zh-cn" in response.json["detail"] and "en" in response.json["supportedLanguages"]
    assert db_voices(app) == [] and files_under(data_dir) == []


@pytest.mark.parametrize(("tag", "language"), [
    ("en-US", "en"), ("pt_BR", "pt"), ("DE-ch", "de"), ("zh-Hans-CN", "zh-cn"), ("zh-SG", "zh-cn"),
    ("ZH-CN", "zh-cn")])
def test_a_browsers_language_tag_speaks_its_language(client, tag: str, language: str) -> None:
    made = client.post("/api/train-voice", json={"modelName": tag, "audioDataUri": recording(),
                                                 "language": tag})
    assert made.status_code == 200, made.json
    assert client.get(f"/api/voices/{made.json['modelId']}").json["language"] == language
    spoken = client.post("/api/tts", json={"text": "Hi.", "voiceId": "default-female", "language": tag})
    assert spoken.status_code == 200, spoken.json


@pytest.mark.parametrize("tag", ["zh-TW", "zh-Hant", "zh-HK", "english", "en-", "xx-US"])
def test_a_tag_of_a_language_xtts_does_not_speak_is_422(client, tag: str) -> None:
    response = client.post("/api/tts", json={"text": "Hi.", "voiceId": "default-female", "language": tag})
    assert response.status_code == 422 and "supported" in response.json["detail"], response.json


def test_a_failed_database_write_leaves_no_files(app, client, data_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from voiceforge.services import voices

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(voices, "add_ready_voice", broken)
    response = client.post("/api/train-voice", json={"modelName": "x", "audioDataUri": recording()})
    assert response.status_code == 500 and response.json["detail"]
    assert files_under(data_dir) == []


def test_tts_with_a_cloned_voice_returns_24khz_mono_16bit_wav(client) -> None:
    voice_id = enrol(client)
    response = speak(client, voice_id)
    assert response.status_code == 200
    assert set(response.json) == {"audioDataUri"}
    params, samples = read_wav(response.json["audioDataUri"])
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 24000)
    assert samples.size > 2400 and np.abs(samples).max() > 0


@pytest.mark.parametrize("voice_id", ["default-ana-florence", "default-claribel-dervla", "default-male",
                                      "default-female", "default-anything-else"])
def test_tts_with_builtin_voices_and_aliases(client, voice_id: str) -> None:
    response = speak(client, voice_id)
    assert response.status_code == 200, response.json
    params, samples = read_wav(response.json["audioDataUri"])
    assert params.framerate == 24000 and samples.size > 0


def test_aliases_resolve_to_their_speakers(client) -> None:
    male = speak(client, "default-male").json["audioDataUri"]
    assert male == speak(client, "default-damien-black").json["audioDataUri"]
    assert male != speak(client, "default-ana-florence").json["audioDataUri"]


@pytest.mark.parametrize("language", ["en", "de", "ru", "es", "zh-cn", "ja"])
def test_tts_in_several_languages(client, language: str) -> None:
    texts = {"en": "Good morning.", "de": "Guten Morgen, wie geht's?", "ru": "Доброе утро, друзья.",
             "es": "Buenos días, amigos.", "zh-cn": "早上好，朋友们。", "ja": "おはようございます。"}
    response = speak(client, "default-female", texts[language], language=language)
    assert response.status_code == 200, response.json
    assert read_wav(response.json["audioDataUri"])[1].size > 0


def test_speed_changes_the_duration_in_the_right_direction(client) -> None:
    lengths = {speed: read_wav(speak(client, "default-female", speed=speed).json["audioDataUri"])[1].size
               for speed in (0.5, 1.0, 2.0)}
    assert lengths[0.5] > lengths[1.0] > lengths[2.0]


def test_speed_scales_a_long_texts_pauses_with_its_speech(client) -> None:
    # A sentence too long to share a chunk with another: three of them are three chunks of the same
    # audio with two pauses between them, of 180 ms (VOICEFORGE_SENTENCE_PAUSE_MS) at speed 1.
    sentence = ("This sentence is long enough that two of them can never be merged into one chunk of speech, "
                "since together they pass the limit.")
    def length(text: str, speed: float) -> int:
        return read_wav(speak(client, "default-female", text, speed=speed).json["audioDataUri"])[1].size

    for speed in (0.5, 1.0, 2.0):
        pauses = length(" ".join([sentence] * 3), speed) - 3 * length(sentence, speed)
        assert pauses == 2 * round(24000 * 0.180 / speed), (speed, pauses)


def test_variability_zero_repeats_exactly_and_sampling_varies(client) -> None:
    first = speak(client, "default-female").json["audioDataUri"]
    assert speak(client, "default-female").json["audioDataUri"] == first
    varied = {speak(client, "default-female", variability=1.0).json["audioDataUri"] for _ in range(3)}
    assert len(varied) > 1


def test_long_text_is_split_into_sentences_and_joined(client, monkeypatch: pytest.MonkeyPatch) -> None:
    spoken = spoken_chunks(monkeypatch)
    sentence = "This sentence is about sixty characters long, give or take. "
    response = speak(client, "default-female", sentence * 12)
    assert response.status_code == 200
    assert len(spoken) >= 3 and all(len(chunk) <= 250 for chunk in spoken)
    assert " ".join(spoken) == (sentence * 12).strip()


def test_sentences_are_not_merged_past_what_the_model_reads(client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Numbers spelt out make a chunk many times longer in tokens than in characters: sentences the model
    reads one by one must not be refused ("add punctuation") because the server merged them."""
    spoken = spoken_chunks(monkeypatch)
    text = "It costs 1234567 dollars. " * 8  # 207 characters: under English's 250, one chunk by length
    response = speak(client, "default-female", text)
    assert response.status_code == 200, response.json
    assert len(spoken) > 1 and " ".join(spoken) == text.strip()


def test_latents_are_computed_once_per_voice_not_per_request(client, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"compute": 0, "load": 0}
    compute, load = Engine.compute_latents, Latents.load.__func__

    def counting_compute(self: Engine, samples: np.ndarray) -> Latents:
        calls["compute"] += 1
        return compute(self, samples)

    def counting_load(cls: type[Latents], path: Path) -> Latents:
        calls["load"] += 1
        return load(cls, path)

    monkeypatch.setattr(Engine, "compute_latents", counting_compute)
    monkeypatch.setattr(Latents, "load", classmethod(counting_load))
    voice_id = enrol(client)
    for _ in range(3):
        assert speak(client, voice_id).status_code == 200
    assert calls == {"compute": 1, "load": 1}


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"text": "Hi", "voiceId": "nobody-00000000"}, 404, "not found"),
    ({"text": "Hi", "voiceId": "../../etc/passwd"}, 404, "not found"),
    ({"text": "", "voiceId": "default-female"}, 422, "nothing to speak"),
    ({"text": "  \u200b\u200f ", "voiceId": "default-female"}, 422, "nothing to speak"),
    ({"text": "?!… 🙂", "voiceId": "default-female"}, 422, "nothing to speak"),
    ({"text": "x" * 5001, "voiceId": "default-female"}, 422, "5000"),
    ({"text": "Hi", "voiceId": "default-female", "language": "xx"}, 422, "supported"),
    ({"text": "मेरे पास 5 सेब हैं", "voiceId": "default-female", "language": "hi"}, 422, "spell out"),
    # coqui's number expansion fails with other errors too: KeyError (hu, five decimals), OverflowError
    # (es, pt, tr from 10^27 up)
    ({"text": "A pi értéke 3.14159.", "voiceId": "default-female", "language": "hu"}, 422, "spell out"),
    ({"text": "Tengo 9999999999999999999999999999 euros.", "voiceId": "default-female", "language": "es"},
     422, "too large"),
    ({"text": "Hi", "voiceId": "default-female", "speed": 3}, 422, "speed"),
    ({"text": "Hi", "voiceId": "default-female", "speed": 0.1}, 422, "speed"),
    ({"text": "Hi", "voiceId": "default-female", "variability": -0.1}, 422, "variability"),
    ({"text": "Hi", "voiceId": "default-female", "speed": "fast"}, 400, "speed"),
    ({"text": "Hi", "voiceId": "default-female", "speed": True}, 400, "speed"),
    ({"text": "Hi", "voiceId": "default-female", "speed": "1.5"}, 400, "speed: Not a valid number"),
    ({"text": "Hi", "voiceId": "default-female", "variability": "0"}, 400, "variability: Not a valid number"),
    ({"text": ["Hi"], "voiceId": "default-female"}, 400, "text"),
    ({"voiceId": "default-female"}, 400, "text"),
    ({"text": "Hi"}, 400, "voiceId"),
])
def test_bad_tts_requests_get_clear_4xx(client, body: dict, status: int, detail: str) -> None:
    response = client.post("/api/tts", json=body)
    assert response.status_code == status, response.json
    assert detail in response.json["detail"]


def test_text_the_model_cannot_read_says_why(client) -> None:
    # coqui's number expansion has no Hindi digits and raises NotImplementedError() with no message.
    response = client.post("/api/tts", json={"text": "मेरे पास 123 रुपये हैं।", "voiceId": "default-female",
                                             "language": "hi"})
    assert response.status_code == 422
    assert response.json["detail"] == (
        "This text cannot be spoken in 'hi': the model cannot read its numbers, ordinals or symbols aloud in "
        "this language; spell out numbers and symbols in words.")


@pytest.mark.parametrize(("language", "text"), [
    # NFKC makes ？！ ASCII, and no space follows them
    ("zh-cn", "你今天过得怎么样？我今天过得非常好，谢谢你的关心！" * 4),
    ("ja", "今日はどうでしたか？とても良い一日でした、ありがとう！" * 4),
    ("hi", "क्या आप आज ठीक हैं। मैं बहुत अच्छा हूँ और आपका धन्यवाद करता हूँ कि आपने पूछा। हाँ॥ " * 3),
    ("ar", "كيف حالك اليوم؟ أنا بخير شكرا جزيلا لسؤالك عن حالي يا صديقي العزيز؛ نعم؟ " * 3),
])
def test_long_texts_are_cut_at_their_scripts_sentence_ends(language: str, text: str) -> None:
    chunks = split_text(clean_text(text, max_chars=5000), language)
    assert len(chunks) > 1 and all(len(chunk) <= CHAR_LIMITS[language] for chunk in chunks)
    assert all(chunk[-1] in "?!;。।॥؟؛" for chunk in chunks), chunks  # never mid-sentence


def test_a_sentence_may_end_inside_quotes_or_brackets() -> None:
    """A dialogue's sentences end in a closing quote: cut at a comma instead, a sentence was spoken in two
    pieces with a pause between them."""
    text = ("“Where are you going tonight, my old friend?” “Home, because it is late and I am tired.” “Then "
            "take the last train, or you will have to walk all the way.” “I know, I know.” “Good night, "
            "then.” “Good night, and thank you for everything you did.” He left. (She smiled.) She slept.")
    chunks = split_text(text, "en")
    assert len(chunks) > 1 and " ".join(chunks) == text
    assert all(chunk[-2:] in ("?”", ".”", ".)") or chunk[-1] == "." for chunk in chunks), chunks


def test_marks_inside_latin_words_are_no_sentence_ends() -> None:
    assert split_text("Try example.com/?q=1;v=2 or Really?!Yes.", "en") == [
        "Try example.com/?q=1;v=2 or Really?!Yes."]


@pytest.mark.parametrize(("language", "sentence"), [
    ("en", "Dr. Smith and Mr. Jones will meet you in front of the old church this evening."),
    ("en", "Mrs. Smith and Ms. Jones will meet you in front of the old church this evening."),
    ("en", "Prof. Smith will meet you in front of the old church this evening at eight."),
    ("en", "St. Paul's is a cathedral that many visitors to the city of London like to see."),
    ("en", "Some books, e.g. this one, are read again and again by many people over the years."),
    ("en", "Old books, i.e. those out of print, are hard to find in the shops of a small town."),
    ("en", "J. R. R. Tolkien wrote the book in the years between the two wars in England."),
    ("en", "DR. SMITH AND MRS. JONES WILL MEET YOU IN FRONT OF THE OLD CHURCH TONIGHT."),
    ("en", "See Fig. 3 and table No. 5 on p. 12 for the figures that the team measured."),
    ("de", "Siehe Abb. 3 und Nr. 5 auf S. 12 für die Zahlen, die das Team gemessen hat."),
    ("de", "Hr. Müller und Fr. Schmidt treffen Sie heute Abend vor der alten Kirche am Markt."),
    ("de", "Fr. Schmidt und Dr. Müller treffen Sie heute Abend vor der alten Kirche am Markt."),
    ("de", "Manche Bücher, z.B. dieses hier, liest man immer wieder gern und mit viel Freude."),
    ("fr", "M. Dupont et Mme. Martin vous attendent ce soir devant la vieille église du village."),
    ("fr", "Mme. Martin et M. Dupont vous attendent ce soir devant la vieille église du village."),
    ("es", "La Sra. García y el Dr. López le esperan esta noche delante de la vieja iglesia."),
    ("es", "El Sr. García y la Dra. López le esperan esta noche delante de la vieja iglesia."),
])
def test_a_chunk_never_ends_on_a_title_or_an_initial(language: str, sentence: str) -> None:
    """Cut after "Dr." at a chunk's end, the listener heard "Doctor", with a sentence's falling tune, then
    a pause before "Smith": a title or an initial is no sentence end."""
    before = "It was late. " * ((CHAR_LIMITS[language] - 10) // 13)  # room left for "Dr." but not the rest
    assert split_text(before + sentence, language) == [before.strip(), sentence]


@pytest.mark.parametrize("end", ["We had tea, cake, etc.", "It took 5 ms.", "He met Sammy Davis Jr.",
                                 "The answer was no.", "See the last Fig."])
def test_an_abbreviation_that_often_ends_a_sentence_still_ends_one(end: str) -> None:
    before = "It was late. " * 16
    after = "Then everybody went home and slept until late in the morning of the next day."
    assert split_text(f"{before}{end} {after}", "en") == [before + end, after]


def test_the_degree_sign_is_spoken_while_other_symbols_and_emoji_are_dropped(
        client, monkeypatch: pytest.MonkeyPatch) -> None:
    """XTTS reads ° as "degree" (grad, градус…): dropping it with the emoji made 25°C "twenty-five c"."""
    spoken = spoken_chunks(monkeypatch)
    response = speak(client, "default-female", "It is 25°C ☀ or 77 ℉ © today.")
    assert response.status_code == 200, response.json
    assert spoken == ["It is 25°C or 77 °F today."]


def test_numbers_in_other_scripts_digits_are_spelt_out(client, monkeypatch: pytest.MonkeyPatch) -> None:
    """XTTS expands only ASCII digits into words: Arabic's ٣٫١٤ reached the model as raw digits."""
    arabic = {"text": "لدي ٥ تفاحات و ٣٫١٤ و ١٢٬٠٠٠ كتاب", "voiceId": "default-female", "language": "ar"}
    spoken = spoken_chunks(monkeypatch)
    assert client.post("/api/tts", json=arabic).status_code == 200
    assert spoken == ["لدي 5 تفاحات و 3,14 و 12.000 كتاب"]
    hindi = {"text": "मेरे पास ५ सेब हैं", "voiceId": "default-female", "language": "hi"}
    refused = client.post("/api/tts", json=hindi)  # as with 5: XTTS cannot read numbers in Hindi
    assert refused.status_code == 422 and "spell out" in refused.json["detail"]


@pytest.mark.parametrize(("text", "cleaned"), [
    ("Chapter One\n\nIt was night.\r\n\r\nThe end", "Chapter One. It was night. The end"),
    ("Shopping:\n\n- milk\n- eggs \n \n Done", "Shopping: milk. eggs. Done"),
    ("a hard-wrapped\nsentence goes on", "a hard-wrapped sentence goes on"),
    ("第一章\n\n夜晚", "第一章. 夜晚"), ("Emoji 🎉\n\nafter", "Emoji. after")])
def test_a_blank_line_after_words_ends_a_sentence(text: str, cleaned: str) -> None:
    assert clean_text(text, max_chars=100) == cleaned


@pytest.mark.parametrize(("text", "cleaned"), [
    ("Buy:\n- apples\n- pears\n- milk", "Buy: apples. pears. milk"),
    ("To do\n* wash\n  * dry (twice)\n• fold\n+ put away.", "To do. wash. dry (twice). fold. put away."),
    ("Steps:\n1. Heat it\n2) Mix 2 eggs\n10. Bake", "Steps: 1, Heat it. 2, Mix 2 eggs. 10, Bake"),
    ("- red,\n- green;\n- blue!", "red, green; blue!"),  # the item's own mark is kept
    # no list: a minus, a rule, a year that a hard-wrapped line begins with
    ("it was\n-5 degrees\n---\nin\n1984. Then", "it was -5 degrees --- in 1984. Then"),
    # no list either: a date that a hard-wrapped line begins with (was "am. 1, Mai im Park")
    ("Wir treffen uns am\n1. Mai im Park.", "Wir treffen uns am 1. Mai im Park."),
    ("Ready:\n1. Go", "Ready: 1, Go"),  # one item after a colon is one
])
def test_a_line_break_before_a_list_item_ends_the_item_before_it(text: str, cleaned: str) -> None:
    """A list was read as one sentence, "apples pears milk", with no pause between items and the
    markers left for the model to read."""
    assert clean_text(text, max_chars=100) == cleaned


def test_a_long_numbered_list_is_cut_between_its_items() -> None:
    """A chunk ended on the next item's number ("… for the trip 2."), spoken apart from its item."""
    items = "\n".join(f"{n}. Pack item number {n} for the trip" for n in range(1, 16))
    chunks = split_text(clean_text(f"Before you go:\n{items}", max_chars=5000), "en")
    assert len(chunks) > 1 and all(chunk.rstrip(".").endswith("for the trip") for chunk in chunks), chunks
    assert all(chunk[0].isdigit() for chunk in chunks[1:]), chunks


@pytest.mark.parametrize(("text", "cleaned"), [
    ("I ❤️ you", "I you"), ("Done ✔️ 1️⃣ first", "Done 1 first"), ("🏳️‍🌈 Flag", "Flag")])
def test_emoji_leave_no_invisible_selector_behind(text: str, cleaned: str) -> None:
    assert clean_text(text, max_chars=100) == cleaned


def test_a_long_sentence_is_never_cut_inside_a_number_or_a_time() -> None:
    """Cut at a clause, a sentence is rejoined with spaces: one put after a comma or colon between digits
    would read 1,234,567 as three numbers and 10:30 as two."""
    sentence = ("After a debate that went on well into the night, the committee agreed that the city would "
                "spend 1,234,567 dollars on the bridge, 2,500 on the lamps and 12,000 on the paint, that the "
                "work would start at 10:30 on Monday, 1990–2000 prices or not, and nobody would ask again")
    chunks = split_text(sentence, "en")
    assert len(sentence) > CHAR_LIMITS["en"] and len(chunks) > 1
    assert " ".join(chunks) == sentence


def test_a_long_chinese_sentence_is_cut_at_its_commas() -> None:
    text = clean_text("今天天气很好，我们去公园吧，你觉得怎么样，" * 5, max_chars=5000)
    chunks = split_text(text, "zh-cn")
    assert len(chunks) > 1 and all(chunk.endswith(",") for chunk in chunks), chunks


def finetuned_voice(app, client) -> str:
    """A cloned voice made to look fine-tuned: its GPT weights are a file the decoder reads in its turn."""
    from voiceforge.db import db
    from voiceforge.services import voices

    voice_id = enrol(client)
    (Path(app.config["DATA_DIR"]) / voice_id / "gpt.pth").write_bytes(b"never read: deleted first")
    with app.app_context():
        voices.set_finetuned(voices.get_voice(voice_id), f"{voice_id}/gpt.pth", f"{voice_id}/latents.pth")
        db.session.commit()
    return voice_id


@pytest.mark.parametrize("route", ["/api/tts", "/api/tts/stream", "/v1/audio/speech"])
def test_a_fine_tuned_voice_deleted_while_its_request_waits_is_404(app, client, shared_engine: Engine,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   route: str) -> None:
    voice_id = finetuned_voice(app, client)
    body = ({"model": "tts-1", "input": "Hello there, this is a test.", "voice": voice_id}
            if route.startswith("/v1") else {"text": "Hello there, this is a test.", "voiceId": voice_id})
    shared_engine.decoder()  # built now: building it takes the model lock too
    queued = threading.Event()
    real_speak = shared_engine.speak

    def speak_and_tell(*args: object, **kwargs: object) -> list:
        utterances = real_speak(*args, **kwargs)
        queued.set()
        return utterances

    monkeypatch.setattr(shared_engine, "speak", speak_and_tell)
    answers: list = []
    waiting = threading.Thread(target=lambda: answers.append(app.test_client().post(route, json=body)))
    with shared_engine._model_lock:  # the decoder is busy: the request waits for its turn
        waiting.start()
        assert queued.wait(60)
        assert client.delete(f"/api/voices/{voice_id}").status_code == 204
    waiting.join(60)
    # JSON before any audio byte, on the streamed routes too (OpenAI's error shape on /v1).
    assert answers[0].status_code == 404, answers[0].data[:300]
    detail = answers[0].json["error"]["message"] if route.startswith("/v1") else answers[0].json["detail"]
    assert detail == f"Voice {voice_id!r} not found."
    assert speak(client, "default-female").status_code == 200


def test_a_stream_whose_fine_tuned_voice_goes_before_its_turn_fails_before_any_audio(app, client) -> None:
    """Speech.stream() waits for the first audio, so the view can still answer JSON (streaming.py)."""
    from voiceforge.errors import NotFound
    from voiceforge.runtime import get_runtime
    from voiceforge.services import synthesis

    voice_id = finetuned_voice(app, client)
    with app.app_context():
        runtime = get_runtime()
        speech = synthesis.prepare(runtime, "Hello there.", voice_id)
        assert client.delete(f"/api/voices/{voice_id}").status_code == 204
        with pytest.raises(NotFound):
            speech.stream()
        speech.close()
        # a voice whose weights file was lost, not deleted: 409 as for its other files
        kept = finetuned_voice(app, client)
        speech = synthesis.prepare(runtime, "Hello there.", kept)
        (Path(app.config["DATA_DIR"]) / kept / "gpt.pth").unlink()
        with pytest.raises(Conflict, match="lost its files"):
            speech.stream()
    assert speak(client, "default-female").status_code == 200


def test_the_text_limit_holds_for_what_is_spoken_not_only_for_what_is_sent(make_app) -> None:
    client = make_app(MAX_TEXT_CHARS=100).test_client()
    over = client.post("/api/tts", json={"text": "a" * 101, "voiceId": "default-female"})
    assert over.status_code == 422 and over.json["detail"] == "Text is 101 characters long; the limit is 100."
    # NFKC spells U+FDFA out as 18 characters: 10 of them would speak 180.
    expanding = client.post("/api/tts", json={"text": "\ufdfa" * 10, "voiceId": "default-female"})
    assert expanding.status_code == 422 and "180 characters long once normalised" in expanding.json["detail"]
    assert clean_text("\ufb01" * 50, max_chars=100) == "fi" * 50  # within the limit once spelt out: fine


def test_nan_and_infinity_are_rejected(client) -> None:
    for raw in ('{"text":"Hi","voiceId":"default-female","speed":NaN}',
                '{"text":"Hi","voiceId":"default-female","variability":Infinity}',
                '{"text":"Hi","voiceId":"default-female","speed":1e999}'):
        response = client.post("/api/tts", data=raw, content_type="application/json")
        assert 400 <= response.status_code < 500 and response.json["detail"], raw


def test_a_voice_that_is_not_ready_is_409(app, client) -> None:
    from voiceforge.db import db
    from voiceforge.services import voices

    voice_id = enrol(client)
    with app.app_context():
        voices.get_voice(voice_id).status = VoiceStatus.processing
        db.session.commit()
    response = speak(client, voice_id)
    assert response.status_code == 409 and "not ready" in response.json["detail"]


@pytest.mark.parametrize("damage", [b"", b"not a torch file", "truncated", "wrong shape", "nan"])
def test_a_voice_whose_latents_file_is_damaged_is_409_not_500(app, client, damage) -> None:
    """Unreadable, or readable but unusable (another checkpoint's shapes, NaN): refused before decoding,
    where it would have failed every other request in its batch too."""
    voice_id = enrol(client)
    latents = Path(app.config["DATA_DIR"]) / voice_id / "latents.pth"
    if damage in ("wrong shape", "nan"):
        good = Latents.load(latents)
        cond = torch.zeros(1, 32, 7) if damage == "wrong shape" else torch.full_like(good.gpt_cond_latent,
                                                                                    float("nan"))
        latents.write_bytes(Latents(cond, good.speaker_embedding).to_bytes())
    else:
        latents.write_bytes(latents.read_bytes()[:100] if damage == "truncated" else damage)
    response = speak(client, voice_id)
    assert response.status_code == 409 and "damaged latents file" in response.json["detail"]
    assert speak(client, "default-female").status_code == 200


def test_without_a_model_speech_and_cloning_answer_503_with_instructions(make_app, tmp_path: Path) -> None:
    client = make_app(MODEL_DIR=str(tmp_path / "no-model-here")).test_client()
    for path, body in (("/api/tts", {"text": "Hi", "voiceId": "default-female"}),
                       ("/api/train-voice", {"modelName": "x", "audioDataUri": recording()})):
        response = client.post(path, json=body)
        assert response.status_code == 503
        assert "VOICEFORGE_MODEL_DIR" in response.json["detail"]
        assert "COQUI_TOS_AGREED" in response.json["detail"]
    unconfigured = make_app(MODEL_DIR=None).test_client()
    response = unconfigured.post("/api/tts", json={"text": "Hi", "voiceId": "default-female"})
    assert response.status_code == 503 and "COQUI_TOS_AGREED" in response.json["detail"]


def test_readyz_shows_the_loaded_model_and_device(client) -> None:
    assert speak(client, "default-female").status_code == 200
    model = client.get("/readyz").json["model"]
    assert model["loaded"] is True and model["device"] == "cpu"


def test_an_app_loads_its_model_once_on_first_use(make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[Path] = []
    real = engine_module.load_xtts

    def counting(checkpoint: Path, device: str):
        loads.append(checkpoint)
        return real(checkpoint, device)

    monkeypatch.setattr(engine_module, "load_xtts", counting)
    app = make_app(INFERENCE_QUEUE_SIZE=3)  # an engine of its own, not the session's shared one
    client = app.test_client()
    assert loads == [] and client.get("/readyz").json["model"]["loaded"] is False
    for voice_id in ("default-female", "default-male", "default-female"):
        assert speak(client, voice_id).status_code == 200
    assert len(loads) == 1 and client.get("/readyz").json["model"]["loaded"] is True

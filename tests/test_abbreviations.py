"""Abbreviations XTTS's own table lacks are spelt out before it reads them (services/abbreviations.py)."""

from __future__ import annotations

import pytest

from tests.support.speech import speak, spoken_chunks
from voiceforge.services.abbreviations import spell_out


@pytest.mark.parametrize(("language", "text", "spoken"), [
    ("en", "Prof. Smith reads books, e.g. this one, i.e. the old one.",
     "Professor Smith reads books, for example this one, that is the old one."),
    ("en", "E.g., this one.", "For example, this one."),
    ("en", "See No. 5 on p. 12 and pp. 3-4, Fig. 2 and Vol. 1.",
     "See number 5 on page 12 and pages 3-4, figure 2 and volume 1."),
    ("de", "Siehe S. 12 und Nr. 5, z.B. dies, bzw. das, d. h. Hr. Müller.",
     "Siehe Seite 12 und Nummer 5, zum Beispiel dies, beziehungsweise das, das heißt Herr Müller."),
    ("es", "La Srta. López, p. ej. hoy.", "La señorita López, por ejemplo hoy."),
    ("nl", "Dhr. Jansen, bijv. morgen.", "De heer Jansen, bijvoorbeeld morgen."),
])
def test_abbreviations_are_spelt_out_in_their_language(language: str, text: str, spoken: str) -> None:
    assert spell_out(text, language) == spoken


@pytest.mark.parametrize(("language", "text"), [
    ("en", "I said no. Then I left."),  # "no." before no number is a word
    ("en", "He sang solo. No one listened."),
    ("en", "A step, and a stop."),  # "p." inside a word is no "page"
    ("en", "At 9 a.m. 5 people came."),  # "m." after a dot: part of "a.m."
    ("fr", "Il a dit oui, e.g. hier."),  # English abbreviations in English only
    ("ja", "Prof. Tanaka."),  # a language without a table: left as it is
])
def test_what_is_no_abbreviation_here_is_left_as_it_is(language: str, text: str) -> None:
    assert spell_out(text, language) == text


@pytest.mark.parametrize(("text", "spoken"), [
    ("We had tea, cake, etc. Then we left.", "We had tea, cake, et cetera. Then we left."),
    ("We had tea, cake, etc.", "We had tea, cake, et cetera."),
    ("Tea, cake, etc. and more.", "Tea, cake, et cetera and more."),
])
def test_an_abbreviation_that_ends_a_sentence_keeps_its_end(text: str, spoken: str) -> None:
    assert spell_out(text, "en") == spoken


def test_the_model_is_given_the_words(client, monkeypatch: pytest.MonkeyPatch) -> None:
    """XTTS expands only its own short table ("Dr." -> "doctor"): "e.g." reached the model as letters."""
    spoken = spoken_chunks(monkeypatch)
    response = speak(client, "default-female", "Dr. Smith, e.g. on p. 4, etc. Then Prof. Jones.")
    assert response.status_code == 200, response.json
    assert spoken == ["Dr. Smith, for example on page 4, et cetera. Then professor Jones."]

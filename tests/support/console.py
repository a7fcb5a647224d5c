"""The console page (voiceforge/console/) driven as a person would: clicks, keys, files, a fake microphone."""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.audio import VOICE_RATE, phrases, voice

POLL_SECONDS = 0.1


def write_wav(path: Path, samples: np.ndarray, rate: int = VOICE_RATE) -> Path:
    """Mono 16-bit PCM WAV: what Chromium's fake microphone plays and what a file picker would offer."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def microphone_wav(path: Path) -> Path:
    """Eight seconds of unbroken speech-like sound: a fake microphone loops it, so any take is all speech."""
    return write_wav(path, voice(8.0, seed=3))


def sample_wavs(directory: Path, count: int = 6, seconds: float = 4.0) -> list[Path]:
    """Recordings of a phrase each (as tests/support/finetune.py makes them), saved as files to choose."""
    return [write_wav(directory / f"sample-{i}.wav", phrases(0.3, seconds, 0.3, seed=10 + i))
            for i in range(count)]


class ConsolePage:
    """One console tab in a WebDriver session; every wait fails with what the page showed instead."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url

    # -- finding and waiting -------------------------------------------------------------------------

    def by_id(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, element_id: str) -> str:
        return self.by_id(element_id).text

    def wait(self, condition: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
        """Poll `condition` until it returns something truthy; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = condition()
            except Exception:  # noqa: BLE001 - an element replaced mid-read (the lists re-render): try again
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition}")
            time.sleep(POLL_SECONDS)

    def wait_for_status(self, element_id: str, timeout: float = 120) -> str:
        """The text of a status line once its operation has finished (it says 'ok' or 'error')."""
        def settled() -> str:
            element = self.by_id(element_id)
            classes = (element.get_attribute("class") or "").split()
            return element.text if {"ok", "error"} & set(classes) else ""

        return self.wait(settled, timeout, f"#{element_id} to settle")

    def script(self, source: str, *arguments: Any) -> Any:
        return self.driver.execute_script(source, *arguments)

    # -- the page ------------------------------------------------------------------------------------

    def open(self) -> ConsolePage:
        self.driver.get(self.url + "/")
        self.wait(lambda: self.script("return document.readyState") == "complete", what="the page to load")
        return self

    def use_key(self, key: str) -> None:
        field = self.by_id("api-key")
        field.clear()
        field.send_keys(key)
        self.by_id("key-form").submit()

    def voice_options(self) -> list[str]:
        return self.script("return [...document.querySelectorAll('#speak-voice option')].map(o => o.value)")

    def wait_for_voices(self) -> list[str]:
        return self.wait(self.voice_options, 120, "the voice list to load")

    def record(self, seconds: float) -> None:
        """Press Record, let the fake microphone play for `seconds`, press Stop; wait for the take."""
        takes = len(self.all("#takes li"))
        button = self.by_id("record-button")
        button.click()
        self.wait(lambda: button.get_attribute("aria-pressed") == "true", 30, "recording to start")
        time.sleep(seconds)
        button.click()
        self.wait(lambda: len(self.all("#takes li")) == takes + 1, 30, "the take to be listed")

    def choose_files(self, paths: list[Path]) -> None:
        takes = len(self.all("#takes li"))
        self.by_id("voice-files").send_keys("\n".join(str(path) for path in paths))
        self.wait(lambda: len(self.all("#takes li")) == takes + len(paths), 30, "the files to be listed")

    def create_voice(self, name: str, *, transcripts: list[str] | None = None,
                     epochs: int | None = None) -> str:
        """Fill in the New voice form (fine-tuning when `epochs` is given), submit it, return the status."""
        self.by_id("voice-name").send_keys(name)
        if epochs is not None:
            self.by_id("mode-finetune").click()
            epochs_field = self.by_id("voice-epochs")
            epochs_field.clear()
            epochs_field.send_keys(str(epochs))
        for field, text in zip(self.all("#takes input.transcript"), transcripts or [], strict=False):
            field.send_keys(text)
        self.by_id("create-button").click()
        return self.wait_for_status("create-status")

    def voice_card(self, voice_id: str) -> Any:
        return self.wait(lambda: self.all(f'#voice-list li[data-voice-id="{voice_id}"]'), 30,
                         f"the card of {voice_id}")[0]

    def click_on_card(self, voice_id: str, button: str) -> None:
        """Click a button of a voice's card, finding the card again if the list re-rendered meanwhile."""

        def click() -> bool:
            self.voice_card(voice_id).find_element("xpath", f".//button[text()='{button}']").click()
            return True

        self.wait(click, 30, f"{button} on the card of {voice_id}")

    def job_card(self, timeout: float = 60) -> Any:
        """The newest job's card."""
        return self.wait(lambda: self.all("#job-list li"), timeout, "a job card")[0]

    def speak(self, text: str, *, fmt: str = "mp3", variability: float | None = None) -> str:
        from selenium.webdriver.support.select import Select

        area = self.by_id("speak-text")
        area.clear()
        area.send_keys(text)
        Select(self.by_id("speak-format")).select_by_value(fmt)
        if variability is not None:
            self.script("const r = document.getElementById('speak-variability'); r.value = arguments[0];"
                        "r.dispatchEvent(new Event('input'));", variability)
        self.by_id("speak-button").click()
        return self.wait_for_status("speak-status", 180)

    def player(self) -> dict:
        """What the audio element, the waveform and the download link hold after speaking."""
        return self.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const audio = document.getElementById('speak-audio');
            const canvas = document.getElementById('speak-waveform');
            const link = document.getElementById('speak-download');
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            const rows = new Set();
            for (let i = 3; i < pixels.length; i += 4) {
              if (!pixels[i]) continue;
              painted++;
              rows.add(Math.floor(i / 4 / canvas.width));
            }
            fetch(link.href).then(r => r.blob()).then(blob => done({
              duration: audio.duration, currentTime: audio.currentTime, paused: audio.paused,
              how: audio.dataset.how, playingAt: Number(audio.dataset.playingAt),
              endAt: Number(audio.dataset.endAt),
              waveSeconds: Number(canvas.dataset.seconds), painted, paintedRows: rows.size,
              canvasLabel: canvas.getAttribute('aria-label'), href: link.href, download: link.download,
              linkHidden: link.hidden, blobSize: blob.size, blobType: blob.type}),
              error => done({error: String(error)}));
        """)

    def severe_log_entries(self) -> list[str]:
        """The browser console's errors (script errors, CSP violations, failed loads) since the last call."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

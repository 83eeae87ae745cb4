"""Log-magnitude STFT latents and Griffin-Lim: the STFT against numpy's rfft of the wrapped
frames, exact inverse, phase-free pitch, and a decoded tone at the pitch it was encoded with."""
import jax.numpy as jnp
import numpy as np
import pytest

from avdit import layout as layout_lib
from avdit.models import latent_space
from avdit.models import spectrogram

RATE, HOP = 16000, 320


def _numpy_frame_spectrum(waveform_l, frame, hop):
  wrapped = np.roll(waveform_l, hop // 2 - frame * hop)[:2 * hop]
  return np.fft.rfft(np.sin(np.pi * (np.arange(2 * hop) + 0.5) / (2 * hop)) * wrapped)


def _tone(hz, phase, num_frames=20):
  t = np.arange(num_frames * HOP) / RATE
  return (0.3 * np.sin(2 * np.pi * hz * t + phase))[None].astype(np.float32)


def test_stft_matches_numpy_and_inverts_exactly():
  waveform = np.random.default_rng(0).uniform(-1, 1, (2, 6 * 64)).astype(np.float32)
  spectrum = np.asarray(spectrogram.stft(jnp.asarray(waveform), 64))
  assert spectrum.shape == (2, 6, 65)
  for frame in (0, 3, 5):
    np.testing.assert_allclose(spectrum[1, frame], _numpy_frame_spectrum(waveform[1], frame, 64),
                               atol=1e-4)
  np.testing.assert_allclose(np.asarray(spectrogram.istft(jnp.asarray(spectrum), 64)), waveform,
                             atol=1e-5)


def test_latents_put_the_pitch_at_its_bin_whatever_the_phase():
  bin_hz = np.arange(HOP) * RATE / (2 * HOP)  # 25 Hz apart
  for hz in (310.0, 777.0, 1400.0):
    latents = [np.asarray(spectrogram.forward(jnp.asarray(_tone(hz, p)), HOP))[0, 5:15]
               for p in (0.0, 1.3, 2.9)]
    for z in latents:
      assert np.all(np.abs(bin_hz[np.argmax(z, axis=1)] - hz) <= 12.5)
    peak = np.abs(bin_hz - hz) < 40
    np.testing.assert_allclose(latents[0][:, peak], latents[1][:, peak], atol=0.05)
    np.testing.assert_allclose(latents[0][:, peak], latents[2][:, peak], atol=0.05)


def test_griffin_lim_decodes_a_gliding_tone_at_its_pitch():
  t = np.arange(40 * HOP) / RATE
  hz_l = 400.0 * np.exp(t / t[-1] * np.log(3.0))  # 400 -> 1200 Hz
  audio = (0.3 * np.sin(2 * np.pi * np.cumsum(hz_l) / RATE + 0.7))[None].astype(np.float32)
  latents = spectrogram.forward(jnp.asarray(audio), HOP)
  decoded = np.asarray(spectrogram.inverse(latents))
  assert float(spectrogram.spectral_convergence(jnp.asarray(decoded), latents)[0]) < 0.06
  for centre in range(4000, 12000, 1500):  # numpy FFT peak over 1024 samples (zero-padded)
    window = decoded[0, centre - 512:centre + 512] * np.hanning(1024)
    peak_hz = np.argmax(np.abs(np.fft.rfft(window, 8192))) * RATE / 8192
    assert abs(peak_hz / hz_l[centre] - 1) < 0.03


def test_space_to_depth_with_logmag_audio():
  lay = layout_lib.ClipLayout(num_frames=9, fps=8.0, height=16, width=16, sample_rate=RATE,
                              video_channels=768, audio_channels=HOP)
  space = latent_space.SpaceToDepth(lay, audio_transform="logmag")
  rng = np.random.default_rng(1)
  video = rng.integers(0, 256, (1, 9, 16, 16, 3), dtype=np.uint8)
  audio = _tone(600.0, 0.4, lay.audio_latents)[:, :lay.audio_samples]
  latents = space.encode(video, audio)
  assert latents["audio"].shape == (1, lay.audio_latents, HOP)
  video_back, audio_back = space.decode(latents)
  np.testing.assert_array_equal(np.asarray(video_back), video)
  assert audio_back.shape == audio.shape
  again = np.asarray(space.encode(video, np.asarray(audio_back))["audio"])
  middle = slice(2, lay.audio_latents - 2)  # away from the wrapped, zero-padded ends
  peak = np.argmax(np.asarray(latents["audio"])[0, middle], axis=1)
  np.testing.assert_array_equal(np.argmax(again[0, middle], axis=1), peak)


def test_partial_hops_are_clear_errors():
  with pytest.raises(ValueError, match="not a multiple"):
    spectrogram.stft(jnp.zeros((1, 100)), 64)

"""QA of the data-preparation -> fine-tuning path on inputs of other speakers (a mixed
multi-speaker VCTK layout, a corpus with damaged FLACs, tiny corpora): cheap, in-process,
no training step. Fixtures are made here (tones at 48 kHz, the bundled joe Piper voice's
frontend); nothing reads /work/shared."""

import io
import os

import numpy as np
import pytest
import soundfile as sf

import prep_utils  # noqa: E402  (tests/ is on sys.path)
from vits_jax.data import loader, records

TEXTS = ["The cat sat on the mat.", "A quick brown fox.", "Hello there, old friend.",
         "Rice is often served in round bowls.", "The juice of lemons makes fine punch."]


def _tone(seconds, rate, freq):
  t = np.arange(int(seconds * rate)) / rate
  return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _flac_bytes(seconds, rate, freq):
  buf = io.BytesIO()
  sf.write(buf, _tone(seconds, rate, freq), rate, format="FLAC")
  return buf.getvalue()


@pytest.fixture(scope="module")
def vctk_prepared(tmp_path_factory):
  """A 3-speaker VCTK-0.92 layout (p903, p904, p905), one clip of p903 garbage and one of
  p904 cut short mid-stream, prepared with the joe voice's Piper frontend."""
  root = tmp_path_factory.mktemp("qa_vctk")
  src = root / "VCTK"
  for s, spk in enumerate(("p903", "p904", "p905")):
    (src / "wav48_silence_trimmed" / spk).mkdir(parents=True)
    (src / "txt" / spk).mkdir(parents=True)
    for i, text in enumerate(TEXTS, 1):
      cid = f"{spk}_{i:03d}"
      (src / "wav48_silence_trimmed" / spk / f"{cid}_mic1.flac").write_bytes(
          _flac_bytes(0.8, 48000, 150.0 + 60 * s + 10 * i))
      (src / "txt" / spk / f"{cid}.txt").write_text(text + "\n")
  (src / "wav48_silence_trimmed" / "p903" / "p903_002_mic1.flac").write_bytes(b"not a flac")
  whole = (src / "wav48_silence_trimmed" / "p904" / "p904_003_mic1.flac").read_bytes()
  (src / "wav48_silence_trimmed" / "p904" / "p904_003_mic1.flac").write_bytes(
      whole[:len(whole) // 3])
  out = root / "prepared"
  from data_prep import prepare
  rc = prepare.main([str(a) for a in ("--dataset", "vctk", "--src", src, "--out", out,
                                      "--frontend", "piper", "--val-size", 3,
                                      "--workers", 1)])
  assert rc == 0
  return out


def test_damaged_flacs_are_skipped_and_counted(vctk_prepared):
  manifest = records.load_manifest(str(vctk_prepared))
  counts = manifest["counts"]
  assert counts["rows"] == 15 and counts["skipped"] == 2 and counts["kept"] == 13
  assert counts["train"] + counts["validation"] == 13 and counts["validation"] == 3
  assert {s["id"]: s["reason"] for s in manifest["skipped"]} == {
      "p903_002": "unreadable audio", "p904_003": "unreadable audio"}
  assert manifest["speakers"] == {"p903": 0, "p904": 1, "p905": 2}
  assert manifest["n_speakers"] == 3
  assert manifest["frontend"]["kind"] == "piper" and manifest["frontend"]["n_vocab"] == 256
  recs = prep_utils.all_records(str(vctk_prepared))
  assert len(recs) == 13 and "p903_002" not in recs and "p904_003" not in recs


def test_finetune_config_on_multi_speaker_piper_data_is_one_error(vctk_prepared):
  """configs/finetune.py is joe's single-speaker model: mixed-speaker data is refused
  with a hint, before anything is built."""
  from configs import finetune
  config = finetune.get_config()
  config.data.dir = str(vctk_prepared)
  with pytest.raises(ValueError, match=r"3 speakers but the model has one .*n_speakers=3"):
    records.check_manifest(records.load_manifest(str(vctk_prepared)), config,
                           str(vctk_prepared))


def test_batch_larger_than_the_training_split_is_one_error(vctk_prepared):
  n_train = records.load_manifest(str(vctk_prepared))["counts"]["train"]
  with pytest.raises(ValueError, match=rf"{n_train} training clips .*fewer than one batch "
                     rf"of {n_train + 1}"):
    loader.make_train_loader(str(vctk_prepared), batch_size=n_train + 1, seed=0,
                             num_buckets=1)


def test_one_clip_corpus_prepares_with_no_validation(tmp_path, capsys):
  """A single clip with --val-size 4 (the fine-tuning section's value): the clip trains,
  validation is empty (at most half), and a batch of 4 cannot be made from it."""
  src = tmp_path / "one"
  (src / "wavs").mkdir(parents=True)
  sf.write(src / "wavs" / "c1.wav", _tone(1.0, 48000, 200.0), 48000, subtype="PCM_16")
  (src / "metadata.csv").write_text(f"c1|{TEXTS[0]}|{TEXTS[0]}\n")
  out = tmp_path / "prepared"
  rc, stdout, _ = prep_utils.run_prepare(capsys, "--dataset", "ljspeech", "--src", src,
                                         "--out", out, "--frontend", "piper",
                                         "--val-size", 4, "--workers", 1)
  assert rc == 0, stdout
  counts = records.load_manifest(str(out))["counts"]
  assert counts["train"] == 1 and counts["validation"] == 0
  with pytest.raises(ValueError, match="fewer than one batch of 4"):
    loader.make_train_loader(str(out), batch_size=4, seed=0, num_buckets=1)
  # prepared at the joe voice's rate and ids, as configs/finetune.py expects
  from configs import finetune
  config = finetune.get_config()
  records.check_manifest(records.load_manifest(str(out)), config, str(out))

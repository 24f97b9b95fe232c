"""Voice API: loading every source, batching, buckets, validation, long text.

Uses the tiny Piper exports (tests/fixtures/make_piper_tiny.py; same frontend as the bundled
voice, fast to run) and fixtures in the official and HF formats.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from vits_jax import load_voice
from vits_jax import inference
from vits_jax import voice as voice_lib

FIXTURES = Path(__file__).parent / "fixtures"
MULTI = FIXTURES / "piper_tiny_multi.onnx"
HIGH = FIXTURES / "piper_tiny_high.onnx"


@pytest.fixture(scope="module", autouse=True)
def coarse_buckets():
  """Coarse id buckets (64, 256, 2048) so the tests here compile few programs. Outputs do
  not depend on buckets (everything is masked), which test_batch_equals_alone checks."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(inference, "TEXT_BUCKETS", (64, 256, 2048))
    yield


@pytest.fixture(scope="module")
def multi():
  return load_voice(MULTI)


_TEXT_BUCKETS = inference.TEXT_BUCKETS


def test_buckets(monkeypatch):
  monkeypatch.setattr(inference, "TEXT_BUCKETS", _TEXT_BUCKETS)
  assert [inference.text_bucket(n) for n in (1, 64, 65, 300, 385, 600, 700, 1100, 2048,
                                             2049)] == [
      64, 64, 128, 384, 512, 640, 768, 1280, 2048, 4096]
  assert [inference.batch_bucket(n) for n in (1, 2, 3, 5, 16)] == [1, 2, 4, 8, 16]


def test_batch_equals_alone(multi, monkeypatch):
  """Texts synthesized together (with the batch caps CPUs run with lifted, so they do share
  calls, and each sentence its own noise seed) equal each text alone under the standard id
  buckets (another bucket for the long one: everything is masked)."""
  texts = ["Hello there.", "A second utterance. It has two!", "Short one?",
           "This sentence runs on a while longer than the others. Then one more."]
  kw = dict(speaker="bob", noise_scale=0.667, noise_scale_w=0.8, seed=3)
  monkeypatch.setattr(inference, "MAX_TEXT_BATCH", {})
  monkeypatch.setattr(inference, "MAX_WINDOW_BATCH", {})
  assert 64 < len(multi.text_to_sentence_ids(texts[3])[0]) <= 128
  batch = multi.synthesize_batch(texts, **kw)
  monkeypatch.setattr(inference, "TEXT_BUCKETS", _TEXT_BUCKETS)
  for text, audio in zip(texts, batch):
    alone = multi.synthesize(text, **kw)
    assert audio.dtype == np.float32 and audio.shape == alone.shape
    np.testing.assert_allclose(audio, alone, atol=1e-5)
  # Noise is seeded: same seed same audio, another seed other audio.
  again = multi.synthesize(texts[0], **kw)
  np.testing.assert_array_equal(again, multi.synthesize(texts[0], **kw))
  other = multi.synthesize(texts[0], **dict(kw, seed=4))
  assert other.shape != again.shape or np.abs(other - again).max() > 1e-3


def test_one_trace_per_bucket(multi):
  """Programs are traced once per shape bucket, never per sentence."""
  texts = ["One sentence here.", "Another sentence there.", "Third one.",
           "A fourth, longer one."]
  used, traced = multi.programs_used, multi.trace_count
  for _ in range(2):
    for k, text in enumerate(texts):
      multi.synthesize(text, speaker=k % 3, seed=k)
    multi.synthesize_batch(texts[:2], speaker=1)
    if _ == 0:
      warm = multi.trace_count
  assert multi.trace_count == warm  # the second round traced nothing
  assert multi.trace_count - traced == multi.programs_used - used <= 4


def test_speakers_and_scales(multi):
  assert multi.num_speakers == 3 and multi.sample_rate == 16000
  assert multi.speaker_id("carol") == 2 and multi.speaker_id("1") == 1
  assert multi.speaker_id(None) == 0
  for bad in (3, -1, "7", "nobody"):
    with pytest.raises(ValueError):
      multi.speaker_id(bad)
  single = load_voice(HIGH)
  assert single.num_speakers == 1 and single.speaker_id(None) is None
  np.testing.assert_array_equal(single.synthesize("Hi.", speaker=0), single.synthesize("Hi."))
  for bad in (1, "1", "bob", -1):   # (0, its one speaker, is taken as none, as Piper does)
    with pytest.raises(ValueError, match="single speaker"):
      single.synthesize("Hi.", speaker=bad)
  # (1e-40: float32 durations underflowed to 0 frames, for audio of one frame)
  for kw in (dict(length_scale=0.0), dict(length_scale=-1.0), dict(length_scale=1e-40),
             dict(noise_scale=-0.1), dict(noise_scale_w=float("nan"))):
    with pytest.raises(ValueError):
      multi.synthesize("Hi.", **kw)


def test_text_validation(multi):
  for text in ("", "   ", "😀 🎉"):
    with pytest.raises(ValueError):
      multi.synthesize(text)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    audio = multi.synthesize("Hello 😀 world 你好.")
  assert audio.size > 0 and any("😀" in str(w.message) for w in caught)


def test_long_paragraph(multi):
  # 48 sentences of ~105 characters: three full batches of 16 in one ids bucket.
  sentence = ("The committee met on Tuesday, and after a long discussion about the budget, "
              "it decided to wait one more week. ")
  paragraph = sentence * 48
  assert len(paragraph) >= 5000
  sentences = multi.text_to_sentence_ids(paragraph)
  assert len(sentences) == 48
  run_on = " ".join(["word"] * 700)  # ~3500 characters, no sentence end
  pieces = multi.text_to_sentence_ids(run_on)
  assert len(pieces) >= 2 and all(len(p) <= voice_lib.MAX_IDS for p in pieces)
  # A sentence the frontend leaves longer than MAX_IDS (each of ours splits a run-on text
  # itself) is cut in halves at words, none lost: the word's ids occur 700 times in all.
  word_ids = multi.frontend.text_to_ids("word")[2:-2]   # (without BOS, EOS and pads)
  cut = multi._fitting_ids(run_on)
  assert len(cut) >= 2 and all(len(p) <= voice_lib.MAX_IDS for p in cut)
  found = [sum(p[i:i + len(word_ids)] == word_ids for i in range(len(p))) for p in cut]
  assert sum(found) == 700, found
  # One word of more ids than a sentence may hold is cut in its ids, none lost.
  word = "abcdefghij" * 300
  ids = multi.frontend.text_to_ids(word)
  assert len(ids) > voice_lib.MAX_IDS
  assert sum(multi._fitting_ids(word), []) == ids
  # A VITS-frontend voice cuts a run-on text at spaces, never inside a phoneme block.
  official = load_voice(FIXTURES / "official_tiny" / "G_7.pth")
  text = " ".join(["w [[ w ɜː d ]]"] * 350)   # the 400-character cuts would land in blocks
  cut = official.frontend.split_sentences(text)
  assert len(cut) >= 2 and " ".join(cut) == text
  assert all(p.count("[[") == p.count("]]") == p.count("ɜː") for p in cut)
  assert official.text_to_sentence_ids(text) == [official.frontend.text_to_ids(p) for p in cut]
  # A block longer than a piece is cut between its phonemes, closed and reopened there (its
  # pieces were read as text: letters spelled, 'ɜ' dropped); every phoneme is kept (the
  # spaces where it was cut are dropped, as at any cut).
  text = "Hello there, [[ " + "w ɜː d " * 700 + "]] and more."
  cut = official.frontend.split_sentences(text)
  assert len(cut) >= 3 and all(p.count("[[") == p.count("]]") for p in cut), cut
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # nothing dropped
    pieces = official.text_to_sentence_ids(text)
  space = official.frontend.symbols.index(" ")
  no_blank = lambda ids: [i for i in ids if i not in (0, space)]
  assert no_blank(sum(pieces, [])) == no_blank(official.frontend.text_to_ids(text))
  audio = multi.synthesize(paragraph, noise_scale=0.0, noise_scale_w=0.0)
  parts = multi.synthesize_ids(sentences, 0, noise_scale=0.0, noise_scale_w=0.0)
  # Sentences are joined directly (no silence), in order.
  np.testing.assert_allclose(audio, np.concatenate(parts), atol=1e-5)
  gap = multi.synthesize("One. Two.", sentence_silence=0.25, noise_scale=0.0,
                         noise_scale_w=0.0)
  plain = multi.synthesize("One. Two.", noise_scale=0.0, noise_scale_w=0.0)
  assert gap.size == plain.size + 4000


def _ids(voice):
  rng = np.random.RandomState(5)
  return [list(rng.randint(1, 150, n)) for n in (9, 30)]


def test_official_checkpoint_matches_piper(multi):
  """official_tiny holds piper_tiny_multi's weights in official G_*.pth format."""
  folder = FIXTURES / "official_tiny"
  for source in (folder, folder / "G_7.pth"):
    official = load_voice(source)
    assert official.num_speakers == 3 and official.sample_rate == 16000
    assert official.frontend.name == "vits"
    ids = _ids(official)
    got = official.synthesize_ids(ids, 1, noise_scale=0.0, noise_scale_w=0.0)
    want = multi.synthesize_ids(ids, 1, noise_scale=0.0, noise_scale_w=0.0)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)


def test_torch_free_checkpoint_reader_matches_state_dict():
  from vits_jax.convert.official_pth import load_official_checkpoint
  from vits_jax.convert.piper import load_piper
  sd, step = load_official_checkpoint(FIXTURES / "official_tiny" / "G_7.pth")
  ref = load_piper(MULTI).state_dict
  assert step == 7 and set(sd) == set(ref)
  for k in ref:
    np.testing.assert_array_equal(sd[k], ref[k])


def test_hf_voice_matches_transformers():
  folder = FIXTURES / "hf_tiny"
  hf = load_voice(folder)
  golden = np.load(folder / "golden.npz")
  for k, text in enumerate(golden["texts"]):
    ids = hf.frontend.text_to_ids(str(text))
    assert ids == golden[f"ids_{k}"].tolist()
    audio = hf.synthesize_ids([ids], noise_scale=0.0, noise_scale_w=0.0)[0]
    assert audio.shape == golden[f"wav_{k}"].shape
    assert np.abs(audio - golden[f"wav_{k}"]).max() <= 1e-3


def test_hf_folder_saved_as_pytorch_model_bin(tmp_path):
  """An older save's `pytorch_model.bin` (no safetensors) is read with the tensors-only
  reader: the same voice, the same audio."""
  import shutil
  from safetensors.numpy import load_file
  from vits_jax.convert import official_pth
  folder = tmp_path / "bin"
  shutil.copytree(FIXTURES / "hf_tiny", folder)
  state = load_file(str(folder / "model.safetensors"))
  (folder / "model.safetensors").unlink()
  official_pth.save_torch_checkpoint(folder / "pytorch_model.bin", state)
  ids = [[0, 5, 0, 9, 0, 12, 0]]
  want = load_voice(FIXTURES / "hf_tiny").synthesize_ids(ids, noise_scale=0.0)[0]
  np.testing.assert_array_equal(load_voice(folder).synthesize_ids(ids, noise_scale=0.0)[0],
                                want)
  official_pth.save_torch_checkpoint(folder / "pytorch_model.bin", {"model": state})
  with pytest.raises(ValueError, match="pytorch_model.bin: not a state dict"):
    load_voice(folder)
  (folder / "pytorch_model.bin").unlink()
  with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
    load_voice(folder)


def test_hf_tokenizer_names_the_letters_it_drops():
  """Letters, digits and symbols outside an HF vocabulary are dropped (as VitsTokenizer
  does) with one warning per text that names them (they went silently: '5 cats' said
  'cats'); punctuation outside it goes quietly."""
  import warnings
  from vits_jax.text import get_frontend
  from vits_jax.text.chars import UnknownCharactersWarning
  vocab = {c: i for i, c in enumerate("_ acst")}
  frontend = get_frontend("hf", vocab=vocab, add_blank=False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ids = frontend.text_to_sentence_ids("5 cats. 7 cats + 5 cats!")
    quiet = frontend.text_to_ids("cats, cats.")
  assert ids == [[vocab[c] for c in "cats"], [vocab[c] for c in "cats   cats"]]
  assert [str(w.message) for w in caught] == [
      "dropped characters the voice cannot say: '5' (U+0035) '7' (U+0037) '+' (U+002B)"]
  assert issubclass(caught[0].category, UnknownCharactersWarning)
  assert quiet == [vocab[c] for c in "cats cats"]


def test_hf_tokenizer_language_rule_and_its_export(tmp_path):
  """VitsTokenizer's one language rule: for 'ron' (MMS Romanian, trained on 'ţ' with a
  cedilla) 'ț' with a comma below is read as 'ţ', after normalizing; other languages drop
  it as a character outside the vocabulary. The language survives an HF export."""
  import shutil
  from vits_jax.export import export_voice
  from vits_jax.text import get_frontend
  vocab = {"_": 0, " ": 1, "a": 2, "r": 3, "\u0163": 4}
  text = "\u0162ara \u021ba"   # 'Ţara ța'
  ron = get_frontend("hf", vocab=vocab, add_blank=False, language="ron")
  assert ron.text_to_ids(text) == [4, 2, 3, 2, 1, 4, 2]
  assert get_frontend("hf", vocab=vocab, add_blank=False, language="eng").text_to_ids(
      text) == [4, 2, 3, 2, 1, 2]
  assert get_frontend("hf", vocab=vocab, add_blank=False, normalize=False,
                      language="ron").text_to_ids("\u021ba") == [4, 2]
  with pytest.raises(ValueError, match="language must be a string"):
    get_frontend("hf", vocab=vocab, language=7)
  folder = tmp_path / "ron"
  shutil.copytree(FIXTURES / "hf_tiny", folder)
  tok = json.loads((folder / "tokenizer_config.json").read_text())
  # (and MMS's pad token, its id-0 letter: '<pad>' in its place is an id past the model's
  # embedding for transformers' padded batches; newer transformers saves it as an object)
  (folder / "tokenizer_config.json").write_text(json.dumps(dict(
      tok, language="ron", pad_token={"content": "k", "special": True}, unk_token="<unk>")))
  assert load_voice(folder).frontend.language == "ron"
  assert export_voice(folder, "hf", tmp_path / "out").notes == []   # its own vocab.json
  written = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
  assert (written["language"], written["pad_token"], written["unk_token"]) == (
      "ron", "k", "<unk>")
  again = load_voice(tmp_path / "out").frontend
  assert (again.language, again.pad_token) == ("ron", "k")


def test_workdir_latest_checkpoint(tmp_path, multi):
  import orbax.checkpoint as ocp
  from configs import presets
  from vits_jax.convert import piper
  config = presets.get_config("medium")
  config.model.update({k: v for k, v in piper.load_piper(MULTI).model.items()
                       if k in config.model and k != "n_speakers"})
  config.data.n_speakers = 3
  config.data.sampling_rate = 16000
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  from vits_jax.convert.source import load_source
  trained = load_source(MULTI).params    # as training holds them (weight norm unfolded)
  ckpt = ocp.PyTreeCheckpointer()
  zeros = {"generator": _zeros_like(trained)}
  ckpt.save(tmp_path / "checkpoints" / "5" / "state", {"params": zeros, "step": 5})
  ckpt.save(tmp_path / "checkpoints" / "12" / "state",
            {"params": {"generator": trained}, "step": 12})
  voice = load_voice(tmp_path)
  assert voice.num_speakers == 3 and voice.sample_rate == 16000
  ids = _ids(voice)
  got = voice.synthesize_ids(ids, 2, noise_scale=0.0, noise_scale_w=0.0)
  want = multi.synthesize_ids(ids, 2, noise_scale=0.0, noise_scale_w=0.0)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def _zeros_like(tree):
  import jax
  return jax.tree_util.tree_map(lambda a: np.zeros(np.shape(a), np.float32), tree)


def test_load_voice_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    load_voice(tmp_path / "missing.onnx")
  text = tmp_path / "notes.txt"
  text.write_text("hello")
  with pytest.raises(ValueError):
    load_voice(text)
  with pytest.raises(ValueError):
    load_voice(tmp_path)  # a folder with no voice in it


def test_folded_weight_norm_gives_the_same_audio(multi):
  """Voices keep plain weights (g * v / ||v|| computed once at load); the model with the
  unfolded (g, v) params gives the same audio to float32 rounding."""
  from vits_jax.convert.source import load_source
  src = load_source(MULTI)
  flat = lambda tree: {"/".join(map(str, k)) for k, _ in
                       __import__("flax").traverse_util.flatten_dict(tree).items()}
  folded = flat(multi.params)
  assert not any(k.endswith(("weight_g", "weight_v")) for k in folded)
  assert any(k.endswith("weight_v") for k in flat(src.params))
  unfolded = voice_lib.Voice(multi.model, src.params, multi.frontend, multi.sample_rate)
  ids = _ids(multi)
  for noise in (0.0, 0.667):
    got = multi.synthesize_ids(ids, 1, noise_scale=noise, noise_scale_w=noise)
    want = unfolded.synthesize_ids(ids, 1, noise_scale=noise, noise_scale_w=noise)
    for g, w in zip(got, want):
      assert g.shape == w.shape
      np.testing.assert_allclose(g, w, atol=2e-5)


def test_second_load_reads_the_cached_conversion(tmp_path, monkeypatch, multi):
  """A Piper voice is converted once; later loads read the cache entry (no ONNX parse), an
  edited voice file or a damaged entry is converted again."""
  import shutil
  from vits_jax.convert import cache, source
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path / "cache"))
  onnx = tmp_path / "v.onnx"
  shutil.copy(MULTI, onnx)
  shutil.copy(str(MULTI) + ".json", str(onnx) + ".json")
  first = load_voice(onnx)
  entries = list((tmp_path / "cache" / "voices").glob("*.voice"))
  assert len(entries) == 1

  def no_parse(*a, **k):
    raise AssertionError("parsed the ONNX file again")
  monkeypatch.setattr(source, "load_source", no_parse)
  second = load_voice(str(onnx) + ".json")
  assert second.speaker_names == first.speaker_names == multi.speaker_names
  assert second.sample_rate == first.sample_rate
  ids = _ids(multi)
  for g, w in zip(second.synthesize_ids(ids, 2), multi.synthesize_ids(ids, 2)):
    np.testing.assert_array_equal(g, w)
  monkeypatch.undo()
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path / "cache"))
  # A damaged entry is ignored (and rewritten).
  whole = entries[0].read_bytes()
  entries[0].write_bytes(whole[:-64])    # truncated
  assert cache.read(entries[0]) is None
  entries[0].write_bytes(b"not a voice entry")
  assert cache.read(entries[0]) is None
  load_voice(onnx)
  assert cache.read(entries[0]) is not None
  # An edited voice file names a new entry, which replaces the old one.
  import os
  os.utime(onnx, ns=(1, 1))
  load_voice(onnx)
  now = list((tmp_path / "cache" / "voices").glob("*.voice"))
  assert len(now) == 1 and now[0] != entries[0]
  # So does an edited .onnx.json (speaker names, phonemes and knobs come from the entry).
  config = json.loads(Path(str(onnx) + ".json").read_text(encoding="utf-8"))
  config["speaker_id_map"] = {f"renamed {k}": v for k, v in config["speaker_id_map"].items()}
  Path(str(onnx) + ".json").write_text(json.dumps(config), encoding="utf-8")
  assert sorted(load_voice(onnx).speaker_names) == sorted(config["speaker_id_map"])
  assert [p for p in (tmp_path / "cache" / "voices").glob("*.voice")] != now
  # And a change of the converter's code (a new version of vits_jax): a copy of the package
  # names the same entry, and with one converter file edited another.
  before = cache.entry_path([onnx])
  pkg, real = tmp_path / "pkg", Path(cache.__file__).resolve().parents[2]
  shutil.copytree(real / "vits_jax" / "convert", pkg / "vits_jax" / "convert")
  for part in ("vits_jax/models/layers.py", "configs/base.py"):
    (pkg / part).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(real / part, pkg / part)
  try:
    monkeypatch.setattr(cache, "__file__", str(pkg / "vits_jax" / "convert" / "cache.py"))
    cache._code_hash.cache_clear()
    assert cache.entry_path([onnx]) == before
    with open(pkg / "vits_jax" / "convert" / "piper.py", "a", encoding="utf-8") as f:
      f.write("# edited\n")
    cache._code_hash.cache_clear()
    assert cache.entry_path([onnx]) != before
  finally:
    monkeypatch.undo()
    monkeypatch.setenv("VITS_JAX_XLA_CACHE", str(tmp_path / "cache"))
    cache._code_hash.cache_clear()
  assert cache.entry_path([onnx]) == before
  # Only the most recently used MAX_ENTRIES voices stay (a cache hit counts as a use).
  monkeypatch.setattr(cache, "MAX_ENTRIES", 2)
  copies = []
  for k in range(3):
    copies.append(tmp_path / f"c{k}.onnx")
    shutil.copy(MULTI, copies[-1])
    shutil.copy(str(MULTI) + ".json", str(copies[-1]) + ".json")

  def kept():
    return sorted(p.name for p in (tmp_path / "cache" / "voices").glob("*.voice"))

  def names(*voices):
    return sorted(cache.entry_path(source.piper_files(v)).name for v in voices)
  load_voice(copies[0])
  load_voice(copies[1])     # the first voice's entry is the oldest: removed
  assert kept() == names(copies[0], copies[1])
  load_voice(copies[0])     # read from the cache: now more recent than copies[1]'s
  load_voice(copies[2])
  assert kept() == names(copies[0], copies[2])
  monkeypatch.setenv("VITS_JAX_XLA_CACHE", "")   # cache off: nothing written
  assert cache.entry_path([onnx]) is None


@pytest.mark.parametrize("kw,needle", [
    (dict(seed=2 ** 64), "seed"), (dict(seed=1.5), "seed"), (dict(seed=True), "seed"),
    (dict(sentence_silence=-1), "sentence_silence"),
    (dict(sentence_silence=float("inf")), "sentence_silence"),
    (dict(noise_scale=float("nan")), "noise_scale"), (dict(length_scale="1"), "length_scale"),
    (dict(length_scale=1e6), "length_scale"), (dict(noise_scale_w=1e3), "noise_scale_w"),
    (dict(noise_scale=1e308), "noise_scale"),
    (dict(volume=-0.5), "volume"), (dict(volume=float("nan")), "volume"),
    (dict(volume="2"), "volume"), (dict(noise_scale=True), "noise_scale"),
    (dict(length_scale=25), "length_scale"), (dict(normalize="no"), "normalize"),
    (dict(speaker=1.5), "speaker"), (dict(speaker=float("inf")), "speaker"),
    (dict(speaker=True), "speaker"), (dict(speaker=[1]), "speaker"),
    (dict(speaker=b"1"), "speaker"),
])
def test_bad_knobs_are_value_errors_naming_them(multi, kw, needle):
  with pytest.raises(ValueError, match=needle):
    multi.synthesize("Hi. Ho.", **kw)
  with pytest.raises(ValueError, match=needle):
    list(multi.stream("Hi. Ho.", **kw))


def test_a_sentence_too_long_to_decode_is_refused_before_its_audio(multi, monkeypatch):
  """The text side's durations are checked against the frame limit (a sentence that slow
  would hold its whole latent tape in memory) before any of its audio is decoded."""
  from vits_jax import inference
  frames = sum(int(d.sum()) for d in multi.synthesize(
      "Hi there, all of you.", with_durations=True)[1])
  monkeypatch.setattr(inference, "MAX_SENTENCE_FRAMES", frames - 1)
  with pytest.raises(ValueError, match=f"more than {frames - 1} frames"):
    multi.synthesize("Hi there, all of you.")
  # In a batch it is that text's refusal alone: skipped, the others as they are alone (the
  # call starts again after it: a text before it whose audio was not out yet included).
  texts = ["Hi. Ho.", "Hi there, all of you. Ho.", "Hey.", "\U0001F600",
           "Hi there, all of you."]
  with pytest.raises(inference.SentenceTooLong, match="text 1: .*more than"):
    multi.synthesize_batch(texts[:3])
  monkeypatch.setattr(inference, "MAX_TEXT_BATCH", {})     # texts side by side, as on an
  monkeypatch.setattr(inference, "MAX_WINDOW_BATCH", {})   # accelerator: "Hi. Ho." unfinished
  out = list(multi.iter_batch(texts, skip_unsayable=True, batch_size=4))
  assert [a.size > 0 for a, _ in out] == [True, False, True, False, False]
  assert [type(why).__name__ for a, why in out if not a.size] == [
      "SentenceTooLong", "NothingToSay", "SentenceTooLong"]
  for k in (0, 2):
    alone = multi.synthesize(texts[k])
    assert out[k][0].shape == alone.shape and np.abs(out[k][0] - alone).max() <= 1e-6


def test_non_string_text_and_skipped_texts(multi):
  for bad in (b"Hello.", 5, None):
    with pytest.raises(ValueError, match="must be a string"):
      multi.synthesize(bad)
  with pytest.raises(ValueError, match="text 1: .*nothing to say"):
    multi.synthesize_batch(["Hi.", "\U0001F600"])
  out = list(multi.iter_batch(["\U0001F600", "Hi.", "\U0001F600", "Ho.", "\U0001F600"],
                              skip_unsayable=True))
  assert [a.size > 0 for a, _ in out] == [False, True, False, True, False]
  np.testing.assert_array_equal(out[1][0], multi.synthesize("Hi."))


def test_broken_piper_files_are_refused_at_load(tmp_path):
  """A speaker map naming ids the model lacks, and an empty .onnx (a download cut off), are
  one clear error when the voice loads, not at its first use."""
  import shutil
  config = json.loads(Path(str(MULTI) + ".json").read_text())
  config["speaker_id_map"] = {"alice": 0, "bob": 99}
  shutil.copy(MULTI, tmp_path / "v.onnx")
  (tmp_path / "v.onnx.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"speaker ids \{'bob': 99\} out of range 0\.\.2"):
    load_voice(tmp_path / "v.onnx")
  (tmp_path / "e.onnx").write_bytes(b"")
  (tmp_path / "e.onnx.json").write_text(Path(str(MULTI) + ".json").read_text())
  with pytest.raises(ValueError, match="e.onnx is empty"):
    load_voice(tmp_path / "e.onnx")


def test_synthesize_ids_and_batch_refuse_what_they_cannot_use(multi):
  """Ids outside the voice's table, a negative or out-of-range speaker, seeds that do not
  match, a flat list: ValueErrors naming them (a speaker of -1 was the last one, silently)."""
  ids = multi.text_to_sentence_ids("Hello there.")
  for kwargs, needle in ((dict(speaker_id=-1), "speaker id -1 out of range"),
                         (dict(speaker_id=3), "speaker id 3 out of range"),
                         (dict(speaker_id=1.0), "speaker_id must be an integer"),
                         (dict(seeds=[1, 2]), "seeds: 2 given for 1")):
    with pytest.raises(ValueError, match=needle):
      multi.synthesize_ids(ids, **kwargs)
  for bad, needle in (([[1, 2, 999]], "holds id 999, outside"), ([[0, -1]], "holds id -1"),
                      (ids[0], r"ids_list\[0\] must be a sequence"), (None, "ids_list"),
                      ([[]], "non-empty")):
    with pytest.raises(ValueError, match=needle):
      multi.synthesize_ids(bad, speaker_id=0)
  for bad in (None, b"Hi.", 5):
    with pytest.raises(ValueError, match="takes a list of texts"):
      multi.synthesize_batch(bad)
  # A generator of texts is a list of texts.
  assert len(multi.synthesize_batch(t for t in ("Hi.", "Ho."))) == 2


def test_speaker_names_that_are_numbers_are_names_first(tmp_path):
  """A voice whose speakers are named by number (LibriTTS-style ids): '2' is the speaker
  named '2', as --list-speakers shows it; a number that names no one is an id."""
  import shutil
  config = json.loads(Path(str(MULTI) + ".json").read_text())
  config["speaker_id_map"] = {"2": 0, "0": 1, "7": 2}
  shutil.copy(MULTI, tmp_path / "v.onnx")
  (tmp_path / "v.onnx.json").write_text(json.dumps(config))
  voice = load_voice(tmp_path / "v.onnx")
  assert [voice.speaker_id(s) for s in ("2", "0", "7", "1", 2, 0)] == [0, 1, 2, 1, 2, 0]


def test_a_dropped_voice_is_freed():
  """A voice its user drops (a notebook reloading it, a server swapping voices) frees its
  params: a program's bookkeeping held every voice ever synthesized with (~60 MB for joe)."""
  import gc
  import weakref
  import jax
  voice = load_voice(MULTI)
  voice.synthesize("Hello there.")
  leaves = [weakref.ref(a) for a in jax.tree_util.tree_leaves(voice.params)]
  del voice
  gc.collect()
  assert all(ref() is None for ref in leaves)
  again = load_voice(MULTI)   # (and the same programs serve the next one)
  assert again.synthesize("Hello there.").size > 0


def test_an_empty_voice_name_is_refused():
  """`load_voice("")` (an unset variable, say) is an error, not the default voice."""
  for name in ("", "  "):
    with pytest.raises(ValueError, match="empty"):
      load_voice(name)


def test_knobs_may_be_numpy_or_jax_scalars(multi):
  """0-d numpy and JAX arrays pass as knobs, as numpy scalars do (they were refused:
  'length_scale must be a number ..., got array(1.2)')."""
  import jax.numpy as jnp
  kw = dict(length_scale=1.2, noise_scale=0.5, seed=3, speaker=1, volume=0.8)
  want = multi.synthesize("Hi there.", **kw)
  arrays = dict(length_scale=np.array(1.2), noise_scale=jnp.float32(0.5), seed=np.array(3),
                speaker=jnp.array(1), volume=jnp.array(0.8))
  np.testing.assert_array_equal(multi.synthesize("Hi there.", **arrays), want)
  for bad in (np.array([1.2]), np.array(True), jnp.array(float("nan"))):
    with pytest.raises(ValueError, match="length_scale"):
      multi.synthesize("Hi there.", length_scale=bad)


def test_a_checkpoint_step_for_a_voice_file_is_refused():
  """`step` (infer.py --step) picks a training workdir's checkpoint: for a Piper voice it is
  an error, also when the voice comes from the conversion cache (it was ignored)."""
  load_voice(MULTI)   # (now cached)
  with pytest.raises(ValueError, match="checkpoint step"):
    load_voice(MULTI, step=3)

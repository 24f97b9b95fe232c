"""Fast checks of the text frontends and the checkpoint converters that the other tests let
through (each found by a mutation audit: a small change to the code that every other test
passed). Where a reference implementation is installed (piper-phonemize, phonemizer) the
check is parity with it; elsewhere the expectation is written out independently."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from vits_jax import text as text_lib
from vits_jax.text import chars, cleaners, espeak, piper_phonemes, sentences, symbols

FIXTURES = Path(__file__).parent / "fixtures"

needs_piper_phonemize = pytest.mark.skipif(
    piper_phonemes.piper_phonemize_module() is None,
    reason="piper-phonemize needs Python <= 3.11 (or VITS_JAX_PIPER_FALLBACK is set)")


def _id_map():
  return json.loads((FIXTURES / "piper_ids.json").read_text(encoding="utf-8"))["phoneme_id_map"]


def _piper(voice="en-us", **config):
  return text_lib.get_frontend("piper", config={"phoneme_id_map": _id_map(),
                                                "espeak": {"voice": voice}, **config})


# ------------------------------------------------------------------ symbols
def test_symbol_table_is_the_official_one_symbol_by_symbol():
  """The whole official table (jaywalnut310/vits text/symbols.py, typed out here): its order
  is every official checkpoint's embedding row order, and a swap of two IPA symbols keeps
  every round trip (ids <-> symbols) intact, so only the table itself can catch it."""
  official = (["_"] + list(';:,.!?¡¿—…"«»“” ')
              + list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
              + list("ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤ"
                     "ʍχʎʏʑʐʒʔʡʕʢǀǁǂǃˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'̩'ᵻ"))
  assert symbols.SYMBOLS == official
  # A few ids as the official `{s: i for i, s in enumerate(symbols)}` gives them.
  assert [symbols.SYMBOL_TO_ID[s] for s in "ɑəˈˌːᵻ"] == [69, 83, 156, 157, 158, 177]


# ------------------------------------------------------------------ VITS sentences
def test_vits_sentence_ends_agree_with_espeak_ng():
  """The VITS splitter follows espeak-ng's sentence ends (the Piper splitter is espeak-ng's
  own): '..' is an ellipsis, closing quotes and brackets stay with their sentence, a
  lowercase word after a stop continues it, a blank line ends it."""
  for text in ["Wait.. then go. Now.", "He asked \"why?\" and left. Fine.",
               "It was (really.) True.", "Stop! Go? Yes. no.", "Hmm... OK. Fine.",
               "I paid 3.50 today. OK?", "One — two, three. Four!", "Line one.\n\nLine two"]:
    assert sentences.split_sentences(text) == piper_phonemes.split_sentences(text, "en-us"), text


def test_every_abbreviation_continues_its_sentence():
  for abbr in ("Mr Mrs Ms Dr Drs St Co Jr Sr Maj Gen Rev Lt Hon Sgt Capt Esq Ltd Col Ft Prof "
               "Vs Etc No Mt Inc Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec").split():
    assert sentences.split_sentences(f"Ask {abbr}. Smith now. Then go.") == [
        f"Ask {abbr}. Smith now.", "Then go."], abbr
  # ... also after an opening quote or bracket.
  assert sentences.split_sentences('She said "Dr. Smith is in." Then left.') == [
      'She said "Dr. Smith is in."', "Then left."]
  assert sentences.split_sentences("(Dr. Smith came.) Then.") == ["(Dr. Smith came.)", "Then."]


def test_long_sentences_are_cut_at_dashes_and_never_inside_a_phoneme_block():
  text = " — ".join(["several words here"] * 20) + "."
  pieces = sentences.split_sentences(text, max_chars=100)
  assert len(pieces) > 1 and all(len(p) <= 100 for p in pieces)
  assert all(p.endswith("—") for p in pieces[:-1]), pieces
  assert " ".join(pieces) == text
  # A stop inside a block ends nothing.
  assert sentences.split_sentences("Say [[ hˈɛloʊ! wˈɜːld ]] now. Then go.") == [
      "Say [[ hˈɛloʊ! wˈɜːld ]] now.", "Then go."]


# ------------------------------------------------------------------ cleaners
def test_abbreviations_are_whole_words_only():
  """keithito's table is matched at a word start (`\\bmr\\.`): 'first.' is no 'st.'."""
  for text in ("It was the first. Then", "A blast. Yes", "The atmr. x", "Bingo. Go"):
    assert cleaners.expand_abbreviations(text) == text


def test_unidecode_spellings_of_letters():
  # unidecode's spellings (the official transliteration).
  assert cleaners.convert_to_ascii("Straße Æsir œuvre Øre Łódź þorn ðe") == (
      "Strasse AEsir oeuvre Ore Lodz thorn de")


def test_basic_cleaners_keep_table_symbols_and_warn_about_others():
  """Without a transliterating cleaner the voice says what is in the table (IPA included)
  and drops the rest with a warning, rather than skipping it silently."""
  basic = text_lib.get_frontend("vits", cleaners=["basic_cleaners"], add_blank=False)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert basic.text_to_ids("ə ˈa") == [symbols.SYMBOL_TO_ID[c] for c in "ə ˈa"]
  with pytest.warns(text_lib.UnknownCharactersWarning, match="U\\+00E9"):
    assert basic.text_to_ids("café") == [symbols.SYMBOL_TO_ID[c] for c in "caf"]


def test_phonemize_words_equals_phonemizer_with_the_vits_marks():
  """`phonemize_words` is phonemizer's `preserve_punctuation=True` with the official marks
  (it only cuts decimals differently: none here)."""
  espeak.configure_phonemizer()
  from phonemizer.backend import EspeakBackend
  from phonemizer.separator import Separator
  backend = EspeakBackend("en-us", preserve_punctuation=True, with_stress=True,
                          punctuation_marks=';:,.!?¡¿—…"«»“”',   # phonemizer 2.x's
                          language_switch="remove-flags")
  for text in ['"Really?" she asked!', "wait... what?! yes.", "one — two", "«bonjour» said he",
               "visit example.com now", "he said:yes,ok", "we met at the café, then left."]:
    want = backend.phonemize([text], separator=Separator(phone="", syllable="", word=" "),
                             strip=True, njobs=1)[0]
    assert espeak.phonemize_words(text) == want, text


# ------------------------------------------------------------------ which characters
@pytest.mark.parametrize("voice, word", [
    ("ru", "привет"), ("ru-lv", "привет"), ("uk", "привіт"), ("bg", "здравей"),
    ("kk", "сәлем"), ("sr", "здраво"), ("ar", "مرحبا"), ("fa", "سلام"), ("he", "שלום"),
    ("hi", "नमस्ते"), ("ne", "नमस्ते"), ("ka", "გამარჯობა"), ("te", "నమస్కారం"),
    ("ml", "നമസ്കാരം"), ("cmn", "你好"), ("ja", "こんにちは"), ("ko", "안녕"), ("el", "γειά")])
def test_a_voice_keeps_the_letters_of_its_own_script(voice, word):
  scripts = frozenset(chars.allowed_scripts(voice))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert chars.drop_unknown(f"{word} ok", lambda c: chars.espeak_can_say(c, scripts)) == (
        f"{word} ok")


def test_halfwidth_katakana_and_private_use_are_not_said_by_an_english_voice():
  english = frozenset(chars.allowed_scripts("en-us"))
  for char in ("ｱ", "ア", "\ue000"):
    assert not chars.espeak_can_say(char, english), hex(ord(char))
  assert chars.espeak_can_say("ｱ", frozenset(chars.allowed_scripts("ja")))


# ------------------------------------------------------------------ Piper
def test_phonemes_to_ids_equals_piper_phonemize_with_unknown_phonemes():
  """A phoneme missing from the map is skipped with its PAD (piper-phonemize's
  `phonemes_to_ids`)."""
  piper_phonemize = pytest.importorskip("piper_phonemize")  # Python <= 3.11
  phonemes = ["h", "ə", "Q", "l", "\U0001F600", "o", " ", "ʊ", "\u0303"]
  assert piper_phonemes.phonemes_to_ids(phonemes, piper_phonemize.get_espeak_map()) == (
      piper_phonemize.phoneme_ids_espeak(phonemes))


@needs_piper_phonemize
def test_piper_text_to_ids_of_several_sentences_joins_them_all():
  """One utterance of several sentences: all their phonemes between one BOS and one EOS, as
  piper's training data was prepared (not the first sentence alone)."""
  piper_phonemize = pytest.importorskip("piper_phonemize")  # Python <= 3.11
  text = "One sentence. And another one! A third?"
  phonemes = [p for s in piper_phonemize.phonemize_espeak(text, "en-us") for p in s]
  assert _piper().text_to_ids(text) == piper_phonemize.phoneme_ids_espeak(phonemes)


def test_piper_text_phoneme_type_equals_phonemize_codepoints():
  """phoneme_type 'text': piper-phonemize's `phonemize_codepoints` (case folded: 'ß' is
  'ss'; NFD)."""
  piper_phonemize = pytest.importorskip("piper_phonemize")  # Python <= 3.11
  frontend = text_lib.get_frontend("piper", config={
      "phoneme_id_map": {"^": [1], "$": [2], "_": [0], "a": [3]}, "phoneme_type": "text",
      "espeak": {"voice": "de"}})
  for text in ("Straße ÉCOLE", "Crème brûlée", "ǅemal ΣΊΣΥΦΟΣ"):
    assert frontend.phonemize(text) == piper_phonemize.phonemize_codepoints(text), text


@pytest.mark.parametrize("voice, text", [
    ("uk", "Це Google. Так."),                          # '(en)...(uk)' language flags
    ("en-us", 'He said "stop." Then he left.'),         # a closing quote after the stop
    ("en-us", "one – two — three. (Done.) 'Yes.' Ok."),  # dashes are semicolons
])
def test_fallback_equals_piper_phonemize(voice, text):
  piper_phonemize = pytest.importorskip("piper_phonemize")  # Python <= 3.11
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert piper_phonemes.phonemize(text, voice, fallback=True) == (
        piper_phonemize.phonemize_espeak(text, voice))


@pytest.mark.parametrize("consumed, kind", [
    ('He said "stop." T', "period"), ("He said 'stop.' T", "period"), ('"Why?" I', "question"),
    ("(Yes!) N", "exclamation"), ("It ended.) S", "period")])
def test_a_clause_ends_at_its_mark_before_closing_quotes(consumed, kind):
  assert piper_phonemes._terminator(consumed, False) == kind


@needs_piper_phonemize
def test_arabic_is_diacritized_as_piper_does():
  """Piper runs libtashkeel on Arabic before espeak-ng."""
  piper_phonemize = pytest.importorskip("piper_phonemize")  # Python <= 3.11
  text = "مرحبا بكم في المدينة"
  want = piper_phonemize.phonemize_espeak(piper_phonemize.tashkeel_run(text), "ar")
  assert _piper("ar").phonemize(text) == want
  assert want != piper_phonemize.phonemize_espeak(text, "ar")   # (it matters here)


# ------------------------------------------------------------------ converters
def test_torch_parametrized_weight_norm_names_are_g_then_v():
  """torch >= 2.1's `parametrizations.weight_norm` saves `original0` = g (the magnitude,
  `[Cout, 1, 1]`) and `original1` = v (the direction): read as weight_g / weight_v in our
  layout, exactly like the legacy names."""
  from vits_jax.convert import torch_names
  rng = np.random.default_rng(0)
  g, v = rng.random((4, 1, 1), np.float32) + 0.5, rng.standard_normal((4, 3, 5)).astype(np.float32)
  new = torch_names.torch_to_flax({"dec.conv_post.parametrizations.weight.original0": g,
                                   "dec.conv_post.parametrizations.weight.original1": v})
  old = torch_names.torch_to_flax({"dec.conv_post.weight_g": g, "dec.conv_post.weight_v": v})
  conv = new["dec"]["conv_post"]
  np.testing.assert_array_equal(conv["weight_g"], g.reshape(4))
  np.testing.assert_array_equal(conv["weight_v"], v.transpose(2, 1, 0))
  np.testing.assert_array_equal(old["dec"]["conv_post"]["weight_g"], conv["weight_g"])


def test_official_checkpoint_of_a_data_parallel_run_and_a_discriminator(tmp_path):
  """A generator saved from `DataParallel` (names under `module.`) loads under the official
  names; a discriminator (`D_*.pth`) is refused saying so."""
  from vits_jax.convert import official_pth
  emb = np.arange(12, dtype=np.float32).reshape(4, 3)
  path = tmp_path / "G_5.pth"
  official_pth.save_torch_checkpoint(path, {"model": {"module.enc_p.emb.weight": emb},
                                            "iteration": 5})
  state, iteration = official_pth.load_official_checkpoint(path)
  assert list(state) == ["enc_p.emb.weight"] and iteration == 5
  np.testing.assert_array_equal(state["enc_p.emb.weight"], emb)
  official_pth.save_torch_checkpoint(tmp_path / "D_5.pth", {"model": {
      "discriminators.0.convs.0.weight": np.zeros((4, 1, 5, 1), np.float32)}})
  with pytest.raises(ValueError, match="D_5.pth.*discriminator"):
    official_pth.load_official_checkpoint(tmp_path / "D_5.pth")

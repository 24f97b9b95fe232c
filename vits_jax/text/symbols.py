"""The symbol table of the official VITS (jaywalnut310/vits, text/symbols.py).

Its order is the embedding row order of every official checkpoint, so it must not change:
178 symbols = pad '_', 16 punctuation marks (space included), 52 ASCII letters and 109 IPA
letters and marks. The IPA string contains the apostrophe twice; like the official
`{s: i for i, s in enumerate(symbols)}`, the lookup keeps the later index.
"""

PAD = '_'
PUNCTUATION = ';:,.!?¡¿—…"«»“” '
LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
LETTERS_IPA = (
    "ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃ"
    "ˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘'̩'ᵻ")

SYMBOLS = [PAD] + list(PUNCTUATION) + list(LETTERS) + list(LETTERS_IPA)

SYMBOL_TO_ID = {s: i for i, s in enumerate(SYMBOLS)}
ID_TO_SYMBOL = dict(enumerate(SYMBOLS))
SPACE_ID = SYMBOL_TO_ID[' ']

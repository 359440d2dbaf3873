"""'Did you mean' for names users type: flags, config keys, choices (difflib's closest matches)."""
import difflib
from typing import Iterable


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """'; did you mean X?' (or 'X or Y') for the options closest to `word`, else ''."""
    options = [str(option) for option in options]
    word = str(word)
    prefixes = [option for option in options
                if len(option) > 3 and (word.startswith(option) or option.startswith(word))]
    close = difflib.get_close_matches(word, options, n=2, cutoff=0.6)
    matches = list(dict.fromkeys(sorted(prefixes, key=len, reverse=True)[:1] + close))[:2]
    return f"; did you mean {' or '.join(matches)}?" if matches else ""

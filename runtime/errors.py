"""The error hierarchy shared by every part of adtk.

It lives in the torch-free runtime so that the runtime, the compiler and the offline toolkit can all
raise and catch the same classes. The CLI prints an AdtkError's message and exits with status 2.
A message says what went wrong, where, what was expected and how to fix it.
"""


class AdtkError(Exception):
    """Base class of every error a user can cause (bad data, bad config, bad artefact...)."""


class DataError(AdtkError):
    """An image, mask or data folder cannot be used (corrupt, empty, wrong size, missing)."""


class ConfigError(AdtkError):
    """An option, method name or parameter value is not valid."""


class ArtefactError(AdtkError):
    """An artefact is missing, truncated, altered, or breaks the artefact contract."""


class TargetError(AdtkError):
    """A device target cannot be built for (unknown target, does not fit its budget)."""


class BackendError(AdtkError):
    """An inference backend is missing or failed to run."""


class WeightsError(ConfigError):
    """Backbone weights cannot be found or do not match the backbone."""


def one_line(text: str) -> str:
    """`text` with what is not printable escaped (a newline as \\n, ESC as \\x1b, an undecodable file-name byte as
    \\udcff): a frame named "a.png\\nadtk serve: model swapped: ..." is one log line that shows its name, not two
    lines, one of them forged, and no terminal control sequence reaches the reader's screen."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def unicode_text(text: str) -> str:
    """`text` as valid Unicode: a file name's undecodable bytes reach Python as lone surrogates (\\udcff), which
    json.dumps writes as escapes that strict JSON parsers refuse (they are no characters); here they become the
    visible text \\udcff, so a JSON record says which name it was and parses everywhere."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")

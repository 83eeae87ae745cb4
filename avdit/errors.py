"""The one exception type for problems a user fixes (config, data, workdir), not bugs.

Raised anywhere in the package; the entry point (avdit/main.py) prints its message and exits
with status 1, without a traceback: the message names the problem and the fix. A ValueError, so
callers that catch bad values catch it too.
"""


class UserError(ValueError):
  pass

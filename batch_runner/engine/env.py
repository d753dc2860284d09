"""Where a run sends its requests unless told otherwise, and the environment
variables that tell it: light, so the command line's parser needs nothing more."""

DEFAULT_BASE_URL = "https://api.tensorslab.com"
KEY_ENV = "TENSORSLAB_API_KEY"
BASE_URL_ENV = "TENSORSLAB_BASE_URL"

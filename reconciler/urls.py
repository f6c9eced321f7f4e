"""Where the Oystehr Project API and its token endpoint are, unless told otherwise.

A module of its own so that the command line's options can show the defaults without
importing the HTTP client (start-up time: `reconciler --help` and `validate` never
touch the network).
"""

DEFAULT_API_URL = "https://project-api.zapehr.com/v1"
DEFAULT_AUTH_URL = "https://auth.zapehr.com/oauth/token"
AUDIENCE = "https://api.zapehr.com"

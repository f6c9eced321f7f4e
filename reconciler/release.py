"""What this build of reconciler was released as.

`.github/workflows/release.yml` writes the commit of the `v<version>` tag into
RELEASE_COMMIT before it builds the wheel it publishes, so `reconciler init` from a
release pins the action and the pre-commit hook to that commit (a tag can be moved
to other code; a commit cannot). In a checkout it stays empty, and `init` asks for
`--action OWNER/REPO@SHA`.
"""

RELEASE_REPOSITORY = "oystehr/reconciler"
RELEASE_COMMIT = ""

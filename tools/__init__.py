"""Lab tooling kept beside the fleetwise package, not shipped in it: scripts that produce the
repository's measured data and the documents generated from it. Run from the repository root
(``python -m tools.<area>.<script>``); see each module's docstring."""

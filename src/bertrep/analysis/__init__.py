"""The analysis: what it reads from MLflow (`collect`), its tidy tables (`tables`,
`profiles`), cell labels and typed tables (`cells`), intervals, the predictor shoot-out,
diagnostics, probe labels and the Markdown summary. The stage is `bertrep.analyze`."""

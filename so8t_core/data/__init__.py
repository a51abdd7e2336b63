"""Generated data: the lexicon, document templates, the corpus, the safety prompt grammar, tasks and coverage.

Sits below ``so8t_core.lm``: it knows text and token ids, never a model.
"""

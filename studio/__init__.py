"""The page's parts: app.py lays them out top to bottom and wires them to the engine.

    model_picker  the sidebar: which model and precision, what it needs, loading it with progress
    controls      the form: prompt, length, top-p, window and the advanced settings -> GenerationSettings
    runner        one visitor's run: waits its turn, streams into session state, ends cleanly on Stop
    run_view      what a run looks like: its text (each token inspectable, colours on request), status, numbers
    step_mode     the Step by step tab: the ten likeliest next tokens, the top-p cut, pick / sample / undo / auto
    charts        the memory charts as Vega-Lite specs: the Write tab's two, and Compare's one for two runs
    compare       the Compare windows tab: two windows, one seed, one chart, a table with coherence
    coherence_view  a run's coherence, scored on request or after a comparison, with progress, said in words
    history       the History tab: this visit's runs, newest first; replay, JSON and CSV (gpt2_engine.records)

Nothing here is worth a unit test on its own: numbers come from gpt2_engine (stats, serving), and
tests/test_page*.py drive the whole page.
"""

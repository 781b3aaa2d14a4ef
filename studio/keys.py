"""Every key the page keeps in `st.session_state` besides its widgets' own, in one place.

A widget's key is its setting's name in the user's words (prompt, top_p, compare_window_a, ...) and is
listed in the docstring of the module that draws it; these are the page's own records of a visit.
"""

RUN = "run"  # the latest Write run (runner.Run)
HISTORY = "history"  # every run of this visit, oldest first (the History tab)
COMPARISON = "comparison"  # the latest comparison (comparison.Comparison)
SWEEP = "sweep"  # the latest sweep (sweep_points.Sweep): its runs, in the order written
STEPPING = "stepping"  # the Step by step tab's run (step_html.Stepping), once started
STEP_ACTION = "step_action"  # what a Step by step button asked for, done by the script run it starts
REPLAY = "history_replay"  # the number of the run to replay in this script run
RECOLOUR = "_recolour_tokens"  # the colour toggle changed: draw the whole page again
COMPARE_SEED = "compare_seed"  # the Compare form's seed box, filled by "Keep this seed"
VISIT = "_visit"  # the visit key this session was restored from (studio/visits.py)

# The widgets a reload brings back as they were (studio/visits.py); buttons cannot be set, so they are not here.
WIDGETS = (
    *("model", "model_folder", "precision", "presenter", "pace"),
    *("prompt", "length", "top_p", "window", "sampler", "temperature", "top_k", "seed", "sentence_end"),
    *("tutorial_mode", "memory_share", "colour_tokens"),
    *("compare_prompt", "compare_window_a", "compare_window_b", "compare_length", "compare_top_p", "compare_seed"),
    "compare_tutorial_mode",
    *("step_prompt", "step_top_p", "step_temperature", "step_window", "step_length"),
    *("sweep_prompt", "sweep_windows", "sweep_length", "sweep_top_p", "sweep_seed"),
)

"""The batch is fair and race-free: the scheduler admits runs within the bound and reads a long phrase a budget at a
time beside the others' steps; the budget follows what steps and prompt tokens cost, learned by the real batcher
from its own passes; and readers popping their steps never trip the batcher's thread."""

from __future__ import annotations

import random
import statistics
import threading

import pytest

import gpt2_engine
from gpt2_engine import fast
from gpt2_engine.batching import Run
from gpt2_engine.scheduler import AGED_S, PIECE, PassCost, Plan, Scheduler

LONG = "The cat sat on the mat. Hello world! Is it raining? Yes, it is. Once upon a time there was a model. " * 3


def run_with(*reads: tuple[str, int, str]) -> Run:
    run = Run(make=None, cache_bytes=0, ready=threading.Condition())  # type: ignore[arg-type]
    run.pending = [fast.Read(name, 0, list(range(n)), kind) for name, n, kind in reads]  # type: ignore[arg-type]
    return run


def step(name: str) -> fast.Read:
    return fast.Read(name, 0, [1], "step")  # type: ignore[arg-type]


def prompt(name: str, n: int) -> fast.Read:
    return fast.Read(name, 0, list(range(n)), "prompt")  # type: ignore[arg-type]


FEW = PassCost.FEW


def learned(few: tuple[float, float], many: tuple[float, float], most: int = 64) -> Scheduler:
    """A scheduler whose passes cost start + each * rows: `few` up to FEW rows (the step kernel), `many` beyond;
    1 and 3 writers' passes of their steps alone (their usual pass) among the first."""
    scheduler = Scheduler(max_runs=8)
    for writers in (1, 3):
        steps = [run_with((chr(97 + k), 1, "step")) for k in range(writers)]
        scheduler.timed(scheduler.plan(steps), few[0] + few[1] * writers)
    for rows in (5, FEW):
        scheduler.costs.timed(rows, few[0] + few[1] * rows)
    for rows in (FEW + 1, 16, 32, most):
        scheduler.costs.timed(rows, many[0] + many[1] * rows)  # pieces beside steps
    return scheduler


def usual(scheduler: Scheduler, writers: Run, seconds: float, times: int = 3) -> None:
    """`times` passes of `writers`' reads alone (no phrase), each taking `seconds`: their usual pass."""
    for _ in range(times):
        plan = scheduler.plan([writers])
        assert not any(read.kind in fast.PIECED for read in plan.reads)
        scheduler.timed(plan, seconds)


def test_a_pass_costs_a_line_of_its_rows_on_each_side_of_the_step_kernel() -> None:
    """Steps, shadows' tokens and a prompt's are rows alike: a pass costs a line of its rows, one line where q8's
    step kernel reads them (up to FEW) and one beyond, with the jump to the prompt kernel or fbgemm between."""
    scheduler = learned(few=(0.08, 0.005), many=(0.15, 0.004))
    costs = scheduler.costs
    assert costs.lines()[0] == pytest.approx((0.08, 0.005)) and costs.lines()[1] == pytest.approx((0.15, 0.004))
    assert costs.seconds(3) == pytest.approx(0.095) and costs.seconds(20) == pytest.approx(0.23)
    for _ in range(3):  # passes a busy neighbour stretched: a median of slopes shrugs a few off
        costs.timed(3, 0.9)
    assert costs.seconds(3) == pytest.approx(0.095)
    costs.forget()
    assert costs.seconds(3) is None
    costs.timed(3, 0.1)
    assert costs.lines()[0] is None  # one count of rows draws no line ...
    costs.timed(12, 0.2)
    costs.timed(20, 0.24)
    assert costs.lines()[0] == pytest.approx((0.085, 0.005))  # ... until the other range gives a slope


def test_a_pass_is_kept_within_a_step_more_for_each_phrase_being_read_up_to_a_few() -> None:
    """The writers, who share one step, and each visitor waiting for a first word get about a step's time of a pass
    (Scheduler.STEP_SHARE), up to READERS of them: eight busy visitors waited a median of 37 s for a first word
    while one phrase at a time got a step's share. The writers' usual pass is their steps and shadows where the
    step kernel reads them; a pass whose own rows already cost that reads no phrase."""
    scheduler = learned(few=(0.08, 0.005), many=(0.15, 0.004), most=256)
    for readers in range(1, Scheduler.READERS + 3):
        share = min(readers, Scheduler.READERS)
        assert scheduler.target(writers=3, readers=readers) == pytest.approx((1 + share) * 0.095)
        assert scheduler.budget(writers=3, rows=3, readers=readers) == Scheduler.FIRST * share  # the piece learned
    assert scheduler.budget(writers=3, rows=15) == 0  # shadows beyond the step kernel: 0.15 + 0.004 x 15 > 2 x 0.095


def test_the_writers_usual_pass_is_their_own_recent_passes_not_this_ones_rows() -> None:
    """Three writers' steps and shadows cost 0.125 s a pass; where one writer's reader lags, a pass reads one step
    and three shadows' tokens, 4 rows. Measured against those 4 rows (0.105 s), the target fell under what a pass
    beside the phrase costs, and the piece was cut to LEAST for good: the target is the writers' usual pass."""
    scheduler = Scheduler(max_runs=8)
    assert scheduler.target(writers=3) is None  # nothing of three writers yet
    writers = [run_with((name, 1, "step"), (name + "-shadow", 1, "shadow")) for name in "abc"]
    for seconds in (0.12, 0.125, 0.13):
        scheduler.timed(scheduler.plan(writers), seconds)
    assert scheduler.target(writers=3) == pytest.approx(2 * 0.125)
    assert scheduler.target(writers=3, readers=2) == pytest.approx(3 * 0.125)
    lagging = run_with(("a", 1, "step"), ("a-shadow", 3, "shadow"))  # one writer's step and shadow, alone
    scheduler.timed(scheduler.plan([lagging]), 0.105)
    assert scheduler.target(writers=3) == pytest.approx(2 * 0.125)  # a usual pass of one writer, not of three
    for writer in writers:  # each shadow reads 4 tokens: 15 rows, beyond the step kernel's (five or more writers)
        writer.pending[1] = writer.pending[1]._replace(ids=[1, 2, 3, 4])
    for _ in range(20):  # passes beyond the step kernel's rows with no phrase (many writers' shadows): not usual
        scheduler.timed(scheduler.plan(writers), 0.5)
    assert scheduler.target(writers=3) == pytest.approx(2 * 0.125)


def test_where_the_writers_usual_pass_is_unknown_or_stale_a_pass_reads_their_steps_alone() -> None:
    """The target is measured on the writers' own passes with no phrase: where there is none yet for as many
    writers, or none in the last STALE passes (the VM's speed moves by a fifth to a half from minute to minute),
    the pass reads no phrase, and its time is the usual pass from then on."""
    scheduler = Scheduler(max_runs=8)
    writer, reader = run_with(("a", 1, "step")), run_with(("b", 100_000, "prompt"))
    probe = scheduler.plan([writer, reader])
    assert [read.kind for read in probe.reads] == ["step"] and probe.target is None
    scheduler.timed(probe, 0.1)
    passes = 0  # with a phrase
    while True:
        plan = scheduler.plan([writer, reader])
        if not any(read.kind == "prompt" for read in plan.reads):
            break
        assert plan.target == pytest.approx(2 * 0.1)
        scheduler.timed(plan, 0.15)
        passes += 1
    assert passes == Scheduler.STALE  # measured again after STALE passes with a phrase
    scheduler.timed(plan, 0.2)  # the VM has slowed: the target follows
    assert scheduler.target(writers=1) == pytest.approx(2 * 0.15)  # the median of 0.1 and 0.2


def test_a_room_where_phrases_always_wait_still_learns_its_piece() -> None:
    """Eight visitors who start again at once keep phrases waiting in every pass: no pass of steps alone came, the
    costs' lines were never drawn, and every pass read 16 of a phrase's tokens for the whole soak (25 s to a first
    word). The pass that measures the writers' usual pass lets the piece grow to what the passes' times allow."""

    def cost(rows: int) -> float:
        return 0.1 + 0.002 * rows

    scheduler = Scheduler(max_runs=8)
    writers = [run_with(("a", 1, "step")), run_with(("b", 1, "step"))]
    readers = [run_with((name, 100_000, "prompt")) for name in "cd"]
    pieces = []
    for _ in range(60):
        plan = scheduler.plan([*writers, *readers])
        pieces.append(sum(len(read.ids) for read in plan.reads if read.kind == "prompt"))
        scheduler.timed(plan, cost(sum(len(read.ids) for read in plan.reads)))
    assert pieces[0] == 0 and statistics.median(pieces[20:]) >= 4 * 2 * Scheduler.FIRST  # two shares of 8+, not 16
    assert max(cost(2 + piece) for piece in pieces) <= 1.25 * 3 * cost(2)  # within about its target


def test_the_piece_grows_while_passes_keep_their_time_and_shrinks_in_proportion_when_one_does_not() -> None:
    """As TCP's congestion window: a quarter more (at least LEAST) after a pass within its target, cut to three
    quarters of its share of the target after one over it, then one more at a time."""
    scheduler = learned(few=(0.08, 0.005), many=(0.15, 0.004))
    writer, reader = run_with(("a", 1, "step")), run_with(("b", 1000, "prompt"))
    plan = scheduler.plan([writer, reader])
    assert [len(read.ids) for read in plan.reads] == [1, Scheduler.FIRST] and plan.target == pytest.approx(0.17)
    scheduler.timed(plan, 0.16)
    assert scheduler.budget(writers=1, rows=1) == Scheduler.FIRST + Scheduler.LEAST
    for _ in range(6):
        scheduler.timed(scheduler.plan([writer, reader]), 0.16)
    grown = scheduler.budget(writers=1, rows=1)
    assert grown > 2 * Scheduler.FIRST
    scheduler.timed(scheduler.plan([writer, reader]), 0.34)  # twice its target: three quarters of half
    assert scheduler.budget(writers=1, rows=1) == int(0.75 * grown / 2)
    reader.pending = [prompt("b", 3)]
    scheduler.timed(scheduler.plan([writer, reader]), 0.1)  # a phrase's last 3 tokens: the piece stays
    assert scheduler.budget(writers=1, rows=1) == int(0.75 * grown / 2)


def test_the_piece_settles_where_passes_cost_their_target_whatever_the_shape_of_the_cost() -> None:
    """Three writers' steps and shadows (6 rows) beside a phrase, no AMX: 4 to 15 of its tokens cost about the
    same (235 ms, through fbgemm), 16 or more 303 ms, against a target of 248. Lines through the budget's own
    bunched pieces read 4 tokens a pass there; the piece learned reads 11 or more, and few passes go over."""

    def cost(rows: int) -> float:
        return 0.124 if rows <= FEW else 0.235 if rows <= 21 else 0.303 + 0.008 * (rows - 22)

    scheduler = Scheduler(max_runs=8)
    writer = run_with(("a", 1, "step"), ("a-shadow", 5, "shadow"))
    reader = run_with(("b", 10_000, "prompt"))
    usual(scheduler, writer, cost(6))
    pieces, over = [], 0
    for _ in range(60):
        plan = scheduler.plan([writer, reader])
        rows = sum(len(read.ids) for read in plan.reads)
        pieces.append(rows - 6)
        over += cost(rows) > 0.248
        scheduler.timed(plan, cost(rows))
    assert statistics.median(pieces[10:]) >= 11 and over <= 60 // 6


def test_the_slope_beyond_the_step_kernel_is_never_under_half_the_slope_up_to_it() -> None:
    """Three writers' shadows (3 steps and 9 tokens, 12 rows) filled the range beyond the step kernel, with two
    pieces beside them; the line through them came out flat and a piece of 73 tokens took 1.9 s (gpt2-xl's shape,
    no AMX). These are that run's passes, as the scheduler had them."""
    scheduler = Scheduler(max_runs=8)
    few = [(8, 0.176), (8, 0.19), (8, 0.203), (8, 0.176), (8, 0.168), (8, 0.172), (8, 0.182), (8, 0.17)]
    few += [(8, 0.169), (6, 0.178), (4, 0.143), (8, 0.189), (8, 0.176), (8, 0.162), (8, 0.164)]
    many = [(12, 0.251), (12, 0.321), (12, 0.253), (12, 0.235), (12, 0.27), (12, 0.259), (16, 0.297), (12, 0.26)]
    many += [(12, 0.285), (12, 0.374), (12, 0.247), (12, 0.316), (12, 0.41), (12, 0.364), (9, 0.298)]
    for rows, seconds in few + many:
        scheduler.costs.timed(rows, seconds)
    few_slope = scheduler.costs.lines()[0][1]
    assert scheduler.costs.lines()[1][1] == pytest.approx(few_slope / 2)  # not flat


def test_phrases_wait_while_the_writers_shadows_take_the_pass_but_never_long() -> None:
    """Where the writers' steps and shadows already cost a pass's time (here 1 step and 12 shadow tokens, beyond
    the step kernel's rows: 0.15 + 0.004 x 13 > 2 x 0.085), a phrase waits, up to PATIENCE passes in a row, then
    reads LEAST; where the shadows are few (3 tokens, within the step kernel), the budget counts their rows and
    the phrase reads beside them."""
    scheduler = learned(few=(0.08, 0.005), many=(0.15, 0.004))
    writer = run_with(("a", 1, "step"), ("a-shadow", 12, "shadow"))
    reader = run_with(("b", 100, "prompt"))
    for _ in range(Scheduler.PATIENCE):
        assert [len(read.ids) for read in scheduler.plan([writer, reader]).reads] == [1, 12]
    assert [len(read.ids) for read in scheduler.plan([writer, reader]).reads] == [1, 12, Scheduler.LEAST]
    assert [len(read.ids) for read in scheduler.plan([writer, reader]).reads] == [1, 12]
    writer.pending = [step("a"), fast.Read("a-shadow", 1, [1, 2, 3], "shadow")]  # type: ignore[list-item, arg-type]
    plan = scheduler.plan([writer, reader])
    assert [len(read.ids) for read in plan.reads] == [1, 3, scheduler.budget(writers=1, rows=4)]
    assert scheduler.budget(writers=1, rows=4) == Scheduler.FIRST  # the piece: 0.1 of a target of 2 x 0.1


def test_the_shadows_of_a_few_runs_keep_within_the_step_kernel() -> None:
    """Three writers started together read their shadows in the same passes: 3 steps and 9 shadow tokens went
    through fbgemm (2-2.5x their steps alone, no AMX). With two to four runs in the batch each shadow reads as
    few tokens a step as keep every step and shadow within the step kernel's rows; a run alone, or a batch where
    not even one fits, keeps its own chunk."""
    scheduler = Scheduler(max_runs=8)
    few = scheduler.costs.FEW
    assert scheduler.shadow_chunk(1) is None
    for runs in range(2, few // 2 + 1):
        chunk = scheduler.shadow_chunk(runs)
        assert chunk is not None and chunk >= 1 and runs * (1 + chunk) <= few < runs * (2 + chunk)
    assert scheduler.shadow_chunk(few // 2 + 1) is None and scheduler.shadow_chunk(8) is None


def test_a_prompt_piece_as_short_as_a_step_still_counts_as_prompt() -> None:
    """Issue 30: a read was told a step from a prompt by its length (8 tokens or fewer: a step). Kinds say it now,
    and the thread policy is told the pass's kind (no thread tries beside a phrase's or a shadow's tokens)."""
    assert Plan(reads=[step("a"), prompt("b", 8)]).kind == "tokens" and Plan(reads=[step("a")]).kind == "steps"
    shadowed = [step("a"), fast.Read("a-shadow", 1, [1, 2, 3], "shadow")]  # type: ignore[arg-type]
    assert Plan(reads=shadowed).kind == "tokens"  # (no thread tries on it: fast.steps_only)
    scheduler = Scheduler(max_runs=8)
    scheduler.timed(Plan(reads=[step("a"), prompt("b", 8)]), 0.2)
    assert list(scheduler.costs._passes[True]) == [(9, 0.2)]  # learned as a pass of 9 rows


def test_a_prompt_beside_steps_is_cut_to_the_budget_and_the_rest_kept() -> None:
    scheduler = Scheduler(max_runs=8)
    stepping = run_with(("a", 1, "step"))
    reading, second = run_with(("b", 100, "prompt")), run_with(("c", 50, "prompt"))
    usual(scheduler, stepping, 0.1)
    plan = scheduler.plan([stepping, reading, second])
    left = 2 * Scheduler.FIRST  # a share's piece for each phrase, before any pass beside steps has taught it
    assert plan.runs == [stepping, second] and plan.rest[second] == [
        prompt("c", 50)._replace(ids=list(range(left, 50)))
    ]
    assert sum(len(read.ids) for read in plan.reads if read.cache == "c") == left  # the shorter first
    alone = run_with(("d", 600, "prompt"))
    plan = scheduler.plan([alone])  # nobody else waits: a whole piece
    assert plan.reads == [prompt("d", PIECE)] and alone in plan.rest and plan.kind == "tokens"


def test_the_shortest_phrase_is_read_first_and_a_long_wait_goes_ahead() -> None:
    """Shortest remaining first: of phrases read at once the short ones start writing soon; one that has waited
    AGED_S goes ahead of shorter ones, so a long phrase is never starved."""
    scheduler = Scheduler(max_runs=8)
    stepping = run_with(("a", 1, "step"))
    long, short = run_with(("b", 900, "prompt")), run_with(("c", 40, "prompt"))
    long.joined, short.joined = 100.0, 110.0
    usual(scheduler, stepping, 0.1)
    plan = scheduler.plan([stepping, long, short], now=111.0)
    assert plan.runs == [stepping, short]  # the budget went to the shorter, though it came later
    plan = scheduler.plan([stepping, long, short], now=100.0 + AGED_S)
    assert plan.runs == [stepping, long]  # the long one has waited AGED_S: it goes first now
    alone = scheduler.plan([long, short], now=111.0)  # nobody steps: a whole piece in all, the shorter's first
    assert alone.runs == [short, long] and [len(read.ids) for read in alone.reads] == [40, PIECE - 40]
    crowd = [run_with((name, 200, "reprime")) for name in "defgh"]  # five writers' resets, nobody stepping
    assert sum(len(read.ids) for read in scheduler.plan(crowd).reads) == PIECE  # not 1,000 tokens in one pass


def test_admission_keeps_the_runs_and_bytes_within_the_bound() -> None:
    scheduler = Scheduler(max_runs=3)
    scheduler.kv_budget_bytes = 1000
    runs = [run_with(("a", 1, "step")) for _ in range(4)]
    for run, cache in zip(runs, (200, 100, 200, 100)):  # a windowed run's cache counts its shadow row too
        run.cache_bytes = cache
    waiting = list(runs)
    assert scheduler.admit(waiting, []) == runs[:3] and waiting == runs[3:]  # three runs, windowed or not
    scheduler.kv_budget_bytes = 450
    waiting = list(runs)
    assert scheduler.admit(waiting, []) == runs[:2]  # 200 + 100; the next 200 would pass 450 bytes
    big = run_with(("e", 1, "step"))
    big.cache_bytes = 5000
    assert scheduler.admit([big], []) == [big]  # a run alone is always let in
    assert scheduler.admit([big], runs[:1]) == []  # beside another, not beyond the bytes


def test_the_real_batcher_reads_a_long_phrase_beside_a_writer_in_pieces_the_budget_learns(engine, monkeypatch) -> None:
    """A phrase as long as the model holds joins a run that writes: it is read beside the writer's steps; its
    first piece is FIRST, later ones what the passes' own times taught the budget (none monkeypatched); and
    the passes' kinds are those of their reads."""
    passes: list[list[tuple[str, int]]] = []
    chosen: list[tuple[int, bool]] = []  # each budget asked for, and whether the costs were known then
    scheduler = engine.batcher.scheduler
    real, budget = fast.forward_reads, scheduler.budget

    def recording(model, reads):
        passes.append([(read.kind, len(read.ids)) for read in reads])
        return real(model, reads)

    def asked(writers: int, rows: int, readers: int = 1) -> int:
        known = scheduler.target(writers, readers) is not None
        chosen.append((budget(writers, rows, readers), known))
        return chosen[-1][0]

    monkeypatch.setattr(fast, "forward_reads", recording)
    monkeypatch.setattr(scheduler, "budget", asked)
    scheduler.forget()  # as a fresh server
    writer = engine.stream("The cat", max_new_tokens=100_000, seed=1, stop_at_eos=False, window=None)
    for _ in range(5):
        next(writer)
    passes.clear()  # the writer's own prompt was read alone
    phrase = "word " * 1000
    newcomer = engine.stream(phrase, max_new_tokens=1, seed=2, window=None)
    feeding = threading.Event()

    def keep_writing() -> None:
        while not feeding.is_set():
            next(writer)

    thread = threading.Thread(target=keep_writing)
    thread.start()
    list(newcomer)
    feeding.set()
    thread.join(60)
    writer.close()
    reading = [p for p in passes if any(kind == "prompt" for kind, _ in p)]
    pieces = [sum(n for kind, n in p if kind == "prompt") for p in reading]
    total = len(engine.prepare_prompt(phrase, None).ids)
    assert sum(pieces) == total and len(reading) >= 3
    assert any(any(kind == "step" for kind, _ in p) for p in reading)  # beside the writer's steps (some passes
    # have none: the writer's reader had its steps waiting, yet the pass keeps to the budget, for its next step)
    assert pieces[0] == Scheduler.FIRST  # the piece before any pass beside steps has taught it
    given, waited = [], 0  # what each budget gives: itself, or under LEAST nothing, LEAST after PATIENCE waits
    for tokens, _ in chosen:
        tokens = tokens if tokens >= Scheduler.LEAST else Scheduler.LEAST if waited >= Scheduler.PATIENCE else 0
        waited = 0 if tokens else waited + 1
        given += [tokens] if tokens else []
    assert pieces[:-1] == given[: len(pieces) - 1]  # each piece the budget of its pass (the last: what was left)
    assert chosen[0][1] and any(tokens != Scheduler.FIRST for tokens, _ in chosen[1:])
    # (the writer's own passes measured its usual pass: later pieces are what the passes' times taught)


@pytest.mark.timeout(300)
def test_many_short_runs_from_several_readers_all_end_well(engine) -> None:
    """The batcher counts each run's waiting steps under its lock: readers that pop them at any moment (and
    close streams early) never make a run fail (it used to iterate an outbox the reader was popping)."""
    failures: list[BaseException] = []

    def visitor(seed: int) -> None:
        chance = random.Random(seed)
        for k in range(12):
            settings = gpt2_engine.GenerationSettings(
                max_new_tokens=chance.randint(1, 12), seed=seed * 100 + k, window=chance.choice([None, 4, 8])
            )
            try:
                for _ in engine.stream("word " * chance.randint(1, 40), settings):
                    if chance.random() < 0.05:
                        break  # a Stop
            except Exception as error:  # noqa: BLE001 - collected: none is expected
                failures.append(error)

    visitors = [threading.Thread(target=visitor, args=(seed,)) for seed in range(4)]
    for thread in visitors:
        thread.start()
    for thread in visitors:
        thread.join(240)
    assert not failures, failures
    assert engine.batcher.join(30)


def test_a_prompt_waits_its_budget_while_others_write_even_when_they_wait_for_their_readers() -> None:
    """Runs whose readers have not taken their steps yet are not in the pass, but their next step must not wait
    behind a whole piece of someone's prompt."""
    scheduler = Scheduler(max_runs=8)
    plan = scheduler.plan([run_with(("b", 100, "prompt"))])
    assert len(plan.reads[0].ids) == min(100, PIECE)  # alone: a piece
    reading = run_with(("b", 100, "prompt"))
    plan = scheduler.plan([reading], active=2)
    assert len(plan.reads[0].ids) == Scheduler.FIRST and reading in plan.rest

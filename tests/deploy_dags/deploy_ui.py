"""What the Flow tabs show, under a real deployment: a DataFrame with cards, a figure card, a
``.foreach`` with a failed item, and a caught ``Failure``."""

from __future__ import annotations

from airflow.sdk import dag

from provider import ForeachOptions, flow_params, flow_task, record_run_state


@dag(
    schedule=None,
    catchup=False,
    params=flow_params(),
    tags=["deploy"],
    on_success_callback=record_run_state,
    on_failure_callback=record_run_state,
)
def deploy_ui():
    @flow_task
    def frame():
        import pandas as pd

        from provider import card

        scores = pd.DataFrame({"model": ["alpha", "beta", "gamma"], "score": [0.91, 0.87, 0.78]})
        card.markdown("## Scores\nThe **best** model is `alpha`.")
        card.table(scores.to_dict("records"))
        return scores

    @flow_task
    def figure() -> int:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        from provider import card

        chart = Figure(figsize=(4, 3))
        chart.add_subplot().plot([1, 4, 2, 5])
        card.image(chart, title="loss by epoch")
        return 4

    @flow_task(catch=True, foreach=ForeachOptions(chunk_size=20))
    def square(item: int) -> int:
        if item == 7:
            raise ValueError(f"item {item} is bad")
        return item * item

    @flow_task(catch=True)
    def broken() -> int:
        raise KeyError("missing column 'price'")

    frame()
    figure()
    square.foreach(item=list(range(60)))
    broken()


deploy_ui()

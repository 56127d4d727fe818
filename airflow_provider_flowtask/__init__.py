"""flowtask's example DAGs, where Airflow looks for a provider's examples.

Airflow (``[core] load_examples``) imports the module named after a provider's distribution,
``airflow-provider-flowtask`` -> ``airflow_provider_flowtask``, and adds its ``example_dags``
folder as a DAG bundle. flowtask itself is the ``provider`` package; this one holds only the
examples (``dags_examples/`` in the source tree).
"""

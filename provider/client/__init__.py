"""Reading and maintaining the artifact store from outside Airflow; the ``flowtask`` command."""

"""Deploy targets: ``local`` (``tasks/deploy/local.py``) and ``sagemaker``
(``tasks/deploy/sagemaker.py``)."""

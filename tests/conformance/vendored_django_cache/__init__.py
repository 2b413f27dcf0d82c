"""Django's own cache tests (``tests.py``, ``models.py``), vendored from the Django 5.2.19 sdist
under Django's BSD licence (``LICENSE``): Django's wheels do not ship its test suite. An app
package too, so the tests that cache ``Poll`` instances can install it for their class."""

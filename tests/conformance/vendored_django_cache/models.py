# Vendored from Django 5.2.19: tests/cache/models.py of the sdist django-5.2.19.tar.gz
# (original sha256 77a2db84e06f878beae132453fbdd686038197e28f53e4a64b5eac0c19a2c7f4).
# Copyright (c) Django Software Foundation and individual contributors; BSD licence (LICENSE
# next to this file). One change: Poll declares its app_label, because this package is not
# in INSTALLED_APPS when it is imported (the tests that use Poll install it for their class:
# tests/conformance/raftcache_harness.py).
from django.db import models
from django.utils import timezone


def expensive_calculation():
    expensive_calculation.num_runs += 1
    return timezone.now()


class Poll(models.Model):
    question = models.CharField(max_length=200)
    answer = models.CharField(max_length=200)
    pub_date = models.DateTimeField("date published", default=expensive_calculation)

    class Meta:
        app_label = "vendored_django_cache"

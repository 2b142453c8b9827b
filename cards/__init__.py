"""Card templates (Jinja2 markdown) for data sets, preference sets, students and eval results."""

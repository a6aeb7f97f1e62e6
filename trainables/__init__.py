"""What runs inside a trial: data, model, losses, schedules, teachers and the student loop."""

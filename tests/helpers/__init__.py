"""What several test modules share: reference models and data, numeric comparisons, callbacks for
real runs."""

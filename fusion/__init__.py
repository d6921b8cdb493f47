"""Score calibration, fusion rules and the transaction policy (approve / step-up / deny)."""

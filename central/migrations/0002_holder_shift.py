"""Issue 13: the attendance shift an employee's monthly bill is judged against (`onecard platform set-shift`): a
name of the enterprise's published configuration document (`shifts.NAME`), NULL = the shift named `default`."""

from yoyo import step

__depends__ = {"0001_baseline"}

steps = [step("ALTER TABLE holders ADD COLUMN shift TEXT", "ALTER TABLE holders DROP COLUMN shift")]

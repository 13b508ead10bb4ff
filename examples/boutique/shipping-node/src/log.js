/** One line per event on stdout: `time level shipping message`. */

/** @param {'INFO' | 'WARNING' | 'ERROR'} level @param {string} message */
export function log(level, message) {
  process.stdout.write(`${new Date().toISOString()} ${level} shipping[${process.pid}] ${message}\n`);
}

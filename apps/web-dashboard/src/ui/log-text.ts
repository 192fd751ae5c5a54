/** Colour codes and carriage-return redraws (progress bars) as a terminal would end up showing them. */
export function cleanLog(text: string): string {
  // eslint-disable-next-line no-control-regex
  const plain = text.replace(/\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]/g, '');
  if (!plain.includes('\r')) return plain;
  return plain
    .split('\n')
    .map((line) => {
      const parts = line.split('\r').filter((p) => p !== '');
      return parts.length ? parts[parts.length - 1]! : '';
    })
    .join('\n');
}

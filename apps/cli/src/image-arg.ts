import { VmlbError, resolveImage } from '@vmlb/layer-engine';
import { UsageError } from './command-exit.js';

/** An image named on the command line (a layer name, a key, a file) that cannot be found is the user's input, not a failure: exit 2. */
export async function resolveImageArg(...args: Parameters<typeof resolveImage>) {
  try {
    return await resolveImage(...args);
  } catch (e) {
    if (e instanceof VmlbError && e.code === 'IMAGE_NOT_FOUND') throw new UsageError(e.message);
    throw e;
  }
}

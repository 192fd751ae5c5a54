import { VmlbError } from '@vmlb/layer-engine';

/** A usage error of `vmlb migrate` (exit status 2): a DIR that is no project, a bad --out. */
export const MIGRATE_USAGE = 'MIGRATE_USAGE';

export function usage(message: string): VmlbError {
  return new VmlbError(MIGRATE_USAGE, message);
}

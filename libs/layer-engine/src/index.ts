export * from './errors.js';
export * from './types.js';
export * from './events.js';
export * from './disk-backend.js';

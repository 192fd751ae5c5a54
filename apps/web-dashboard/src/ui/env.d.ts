/** Stylesheets imported from code: esbuild collects them into the bundle's app-HASH.css. */
declare module '*.css';

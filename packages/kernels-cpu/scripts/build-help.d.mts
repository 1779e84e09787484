/** Types of build-help.mjs (plain JavaScript: build-native.mjs runs it at install, before any build). */
export declare const PACKAGE: string;
export declare const TOOLCHAIN: string;
export declare const REBUILD: string;
export declare const SCRIPT_BLOCKED: string;
export declare function buildFailedHelp(): string;
export declare function scriptBlockedHelp(): string;
export declare function installFailureMessage(reason: string): string;
export declare function missingAddonReason(record: { ok?: boolean; reason?: string } | undefined): string;

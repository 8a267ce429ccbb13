#!/usr/bin/env nextflow
/*
 * virnucpro: find viral sequences in nucleotide FASTA (VirNucPro method), sharded over
 * CPU and GPU tasks. Usage: docs/usage.md. Every process calls the virnucpro CLI.
 *
 *   nextflow run . -profile test
 *   nextflow run . -profile gpu,docker --input reads.fa --outdir results --models /models
 */
include { validateParams; readSamplesheet; helpText } from './subworkflows/local/utils_virnucpro'
include { MODELS_DEMO  } from './modules/local/models_demo'
include { MODELS_FETCH } from './modules/local/models_fetch'
include { MODELS_PREPARE } from './modules/local/models_prepare'
include { VIRNUCPRO    } from './workflows/virnucpro'

workflow {
    main:
    if (params.help) {
        log.info(helpText("${projectDir}/nextflow_schema.json"))
        return
    }
    validateParams(params, "${projectDir}/nextflow_schema.json")

    // --input: a samplesheet CSV (sample,fasta) or a single FASTA(.gz)
    def input = params.input.toString()
    def single_name = params.sample ?: file(input).getName().replaceAll(/\.(fa|fasta|fna|fas)(\.gz)?$/, '')
    ch_input = input.endsWith('.csv')
        ? channel.fromList(readSamplesheet(input, "${projectDir}/assets/schema_input.json"))
        : channel.of([[id: single_name], file(input, checkIfExists: true)])

    // models, resolved once: --models DIR (checksums and the ESM-2 load copy made once, in a
    // task directory: the user's store is only read), demo models (test profile), or fetched
    // into --model_cache (demo and fetch make those files themselves)
    ch_models = channel.empty()
    ch_model_versions = channel.empty()
    if (params.models) {
        MODELS_PREPARE(file(params.models, checkIfExists: true))
        ch_models = MODELS_PREPARE.out.models
        ch_model_versions = MODELS_PREPARE.out.versions
    }
    else if (params.demo_models) {
        MODELS_DEMO()
        ch_models = MODELS_DEMO.out.models.first()
        ch_model_versions = MODELS_DEMO.out.versions
    }
    else {
        MODELS_FETCH()
        ch_models = MODELS_FETCH.out.models.first()
        ch_model_versions = MODELS_FETCH.out.versions
    }

    VIRNUCPRO(ch_input, ch_models, params.shard_size, params.chunk_size)

    VIRNUCPRO.out.versions
        .mix(ch_model_versions)
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", sort: true)

    // inside the handler `workflow` and `params` are not this run's: take them now
    def run = workflow
    def outdir = params.outdir
    run.onComplete {
        log.info(run.success
            ? "virnucpro: done; results in ${outdir}/<sample>/, reports and run_<sample>.json in ${outdir}/pipeline_info/"
            : "virnucpro: failed; see ${outdir}/pipeline_info/ and .nextflow.log")
    }
}

#!/usr/bin/env nextflow
/*
 * virnucpro: find viral sequences in nucleotide FASTA (VirNucPro method), sharded over
 * CPU and GPU tasks. Usage: docs/usage.md. Every process calls the virnucpro CLI.
 *
 *   nextflow run . -profile test
 *   nextflow run . -profile gpu,docker --input reads.fa --outdir results --models /models
 */
include { validateParameters; paramsSummaryLog; samplesheetToList } from 'plugin/nf-schema'
include { MODELS_DEMO  } from './modules/local/models_demo'
include { MODELS_FETCH } from './modules/local/models_fetch'
include { VIRNUCPRO    } from './workflows/virnucpro'

workflow {
    main:
    validateParameters()
    log.info paramsSummaryLog(workflow)

    // --input: a samplesheet CSV (sample,fasta) or a single FASTA(.gz)
    def input = params.input.toString()
    def single_name = params.sample ?: file(input).getName().replaceAll(/\.(fa|fasta|fna|fas)(\.gz)?$/, '')
    ch_input = input.endsWith('.csv')
        ? channel.fromList(samplesheetToList(input, "${projectDir}/assets/schema_input.json"))
        : channel.of([[id: single_name], file(input, checkIfExists: true)])

    // models, resolved once: --models DIR, demo models (test profile), or fetched into --model_cache
    ch_models = channel.empty()
    if (params.models) {
        ch_models = channel.value(file(params.models, checkIfExists: true))
    }
    else if (params.demo_models) {
        ch_models = MODELS_DEMO().models.first()
    }
    else {
        ch_models = MODELS_FETCH().models.first()
    }

    VIRNUCPRO(ch_input, ch_models, params.shard_size, params.chunk_size)

    VIRNUCPRO.out.versions
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", sort: true)

    workflow.onComplete {
        log.info(workflow.success
            ? "virnucpro: done; results in ${params.outdir}/<sample>/, reports and run_<sample>.json in ${params.outdir}/pipeline_info/"
            : "virnucpro: failed; see ${params.outdir}/pipeline_info/ and .nextflow.log")
    }
}
